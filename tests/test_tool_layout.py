"""How tools/ is put together: every tool runs as `python tools/x.py` (from any folder) and as `python -m tools.x`;
tools share code through underscore modules only (no tool imports an entry point or another tool), and only
tools/tools.py touches sys.path; models never import the engine."""
import ast
import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = sorted(glob.glob(os.path.join(ROOT, "tools", "*.py")))


def imported_modules(path):
    """Every module name an import statement of the file names (`from a import b`: a and a.b)."""
    names = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("tool", ["attention_maps", "bench_segmentation"])
def test_a_tool_runs_as_a_script_from_elsewhere_and_as_a_module(tool, tmp_path):
    script = subprocess.run([sys.executable, os.path.join(ROOT, "tools", f"{tool}.py"), "--help"],
                            capture_output=True, text=True, cwd=tmp_path)
    module = subprocess.run([sys.executable, "-m", f"tools.{tool}", "--help"], capture_output=True, text=True,
                            cwd=ROOT)
    for result in (script, module):
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("usage: ") and not result.stderr
    assert script.stdout.split("\n", 1)[1] == module.stdout.split("\n", 1)[1]  # the same parser, the prog aside


def test_tools_import_no_entry_point_and_no_other_tool():
    entry_points = {os.path.basename(path)[:-3] for path in glob.glob(os.path.join(ROOT, "train_*.py"))}
    scripts = {os.path.basename(path)[:-3] for path in TOOLS if not os.path.basename(path).startswith("_")}
    for path in TOOLS:
        for name in imported_modules(path):
            parts = name.split(".")
            assert parts[0] not in entry_points, f"{path} imports {name}"
            assert not (parts[0] == "tools" and len(parts) > 1 and parts[1] in scripts), f"{path} imports {name}"


def test_only_the_bootstrap_touches_sys_path():
    for path in TOOLS:
        if os.path.basename(path) != "tools.py":
            uses = [node.lineno for node in ast.walk(ast.parse(open(path).read(), path))
                    if isinstance(node, ast.Attribute) and node.attr == "path"
                    and isinstance(node.value, ast.Name) and node.value.id == "sys"]
            assert not uses, f"{path}:{uses}"


def test_models_never_import_the_engine():
    for path in glob.glob(os.path.join(ROOT, "models", "*.py")):
        engine = [name for name in imported_modules(path) if name.split(".")[:2] == ["lib", "engine"]]
        assert not engine, f"{path} imports {engine}"
