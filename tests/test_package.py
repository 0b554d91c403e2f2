"""The blocks as an installed package: `pip install .` gives the import package `snl` (lib/'s top level only).

The repository (what the build reads, and the training code beside it) is copied to a temporary directory and
installed from there with `pip install --no-deps --no-build-isolation --target` (no network: the venv's own
setuptools builds it), so the build leaves nothing in this checkout. A subprocess with only the install
directory on its path (another working directory, the repository nowhere on sys.path) imports snl and runs every
block with state_dicts written here by lib's blocks.
"""
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import lib
from lib import NONLOCAL_BLOCKS, build_nonlocal
from tools._checks import randomized
from tools.export_check import CHANNELS, PLANES, SPATIAL, rel_err, sample

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# what the build reads, and the training side beside it (which must stay out of the package)
COPIED = ("pyproject.toml", "README.md", "lib", "models", "tools", "tests", "hubconf.py", "train_val.py")
NOT_COPIED = shutil.ignore_patterns("__pycache__", "*.egg-info")
CASES = [(name, dim) for name in NONLOCAL_BLOCKS for dim in (1, 2, 3) if name != "cc" or dim == 2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The directory `pip install --target` filled from a copy of the repository."""
    needs = "setuptools >= 70.1 (or the wheel package) builds the package offline: pip install -r requirements.txt"
    assert importlib.util.find_spec("setuptools") is not None, needs
    version = tuple(int(part) for part in importlib.metadata.version("setuptools").split(".")[:2])
    assert version >= (70, 1) or importlib.util.find_spec("wheel") is not None, needs
    source, target = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("site")
    for name in COPIED:
        path = os.path.join(ROOT, name)
        if os.path.isdir(path):
            shutil.copytree(path, source / name, ignore=NOT_COPIED)
        else:
            shutil.copy2(path, source / name)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-input", "--disable-pip-version-check", "--target", str(target), str(source)],
                   check=True, cwd=source, capture_output=True, timeout=300)
    return target


def test_installs_only_the_blocks(installed):
    """The install holds the package snl (lib/'s top-level modules) and its metadata, nothing of the training
    side (models, lib/data, lib/engine, tools, tests, entry points), and the version of lib/__init__.py."""
    top = sorted(os.listdir(installed))
    assert top == ["snl", f"snl-{lib.__version__}.dist-info"], top
    modules = {name for name in os.listdir(installed / "snl") if name != "__pycache__"}
    assert modules == {name for name in os.listdir(os.path.join(ROOT, "lib")) if name.endswith(".py")}
    record = (installed / f"snl-{lib.__version__}.dist-info" / "RECORD").read_text()
    for part in ("models/", "engine/", "data/", "tests/", "tools/", "train_val", "hubconf"):
        assert part not in record, part
    metadata = (installed / f"snl-{lib.__version__}.dist-info" / "METADATA").read_text()
    assert "Requires-Dist: torch" in metadata and "Provides-Extra: export" in metadata


def test_installed_blocks_match_lib(installed, tmp_path):
    """Every block and dim, built from `snl` in a process that cannot see the repository, loads lib's
    state_dict and gives lib's outputs (eval and training mode) for the same input."""
    cases = {}
    for name, dim in CASES:
        torch.manual_seed(0)
        block = randomized(build_nonlocal(name, CHANNELS, PLANES, dim=dim))
        cases[f"{name}-{dim}"] = dict(state=block.state_dict(), x=sample((CHANNELS, *SPATIAL[dim])))
    torch.save(cases, tmp_path / "cases.pt")
    script = textwrap.dedent("""
        import sys, torch, snl
        assert snl.__file__.startswith(sys.argv[1]), snl.__file__
        for hidden in ("lib", "models"):
            try:
                __import__(hidden)
            except ImportError:
                pass
            else:
                raise SystemExit(f"{hidden} is importable: the repository is on the path")
        cases = torch.load("cases.pt")
        results = {}
        for key, case in cases.items():
            name, dim = key.rsplit("-", 1)
            block = snl.build_nonlocal(name, %d, %d, dim=int(dim))
            block.load_state_dict(case["state"])
            with torch.no_grad():
                results[key] = [block.eval()(case["x"]), block.train()(case["x"])]
        assert isinstance(snl.build_nonlocal("snl", 8, 4), snl.SNL) and snl.NONLOCAL_BLOCKS["cc"] is snl.CCStage
        torch.save((snl.__version__, results), "results.pt")
    """) % (CHANNELS, PLANES)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(installed), OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", script, str(installed)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    version, results = torch.load(tmp_path / "results.pt")
    assert version == lib.__version__
    for name, dim in CASES:
        block = build_nonlocal(name, CHANNELS, PLANES, dim=dim)
        case = cases[f"{name}-{dim}"]
        block.load_state_dict(case["state"])
        with torch.no_grad():
            want = [block.eval()(case["x"]), block.train()(case["x"])]
        for got, expected in zip(results[f"{name}-{dim}"], want):
            assert rel_err(got, expected) <= 1e-6, (name, dim)
