"""The blocks on the deployment path: torch.export, ONNX in onnxruntime, any device and dtype, torch.hub.

torch.compile is checked by tools/export_check.py (compiling is too slow for this suite on 2 cores).
"""
import copy
import importlib.util
import os

import pytest
import torch
from test_resume import one_thread  # noqa: F401  (autouse fixture: one CPU thread)

import lib.cc
import lib.cgnl
import lib.stage
from lib import NONLOCAL_BLOCKS, build_nonlocal
from models import build_model
from models.segmentation import build_segmentor
from tools._checks import randomized
from tools.export_check import (
    CHANNELS,
    OTHER_BATCH,
    OTHER_SPATIAL,
    PLANES,
    SPATIAL,
    check_export,
    check_onnx,
    compare,
    rel_err,
    sample,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK_DIMS = [(name, dim) for name in NONLOCAL_BLOCKS for dim in (1, 2, 3) if name != "cc" or dim == 2]
ONNX_BLOCKS = ("snl", "nl", "cgnl", "cc", "a2")
HAS_ORT = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAS_ORT, reason="onnx / onnxscript / onnxruntime not installed "
                                                    "(pip install -r requirements.txt, or pip install .[export])")


def block(name, dim=2, **kwargs):
    torch.manual_seed(0)
    return randomized(build_nonlocal(name, CHANNELS, PLANES, dim=dim, **kwargs)).eval()


@pytest.mark.parametrize("name,dim", BLOCK_DIMS)
def test_torch_export(name, dim):
    """The exported program gives the eager outputs (<= 1e-5 relative) at the traced and another batch size;
    SNL's eager path here is the fused one (N >= 4C'), the exported one the module path: same math."""
    x = sample((CHANNELS, *SPATIAL[dim]))
    assert check_export(block(name, dim), x, [sample((CHANNELS, *SPATIAL[dim]), OTHER_BATCH, seed=1)]) <= 1e-5


def test_export_takes_plain_paths():
    """Exported programs contain no autograd.Function of the fast paths (in-place writes break ONNX)."""
    for name in ("snl", "cgnl", "cc"):
        program = torch.export.export(block(name), (sample((CHANNELS, *SPATIAL[2])),))
        graph = str(program.graph_module.code)
        assert "autograd_function" not in graph and "FusedReluDotStage" not in graph, name
        assert "copy_to" not in graph, name


@pytest.mark.parametrize("name", ["snl", "a2", "ns", "cgnl", "cc"])
def test_captured_paths_match_the_fast_paths(name, monkeypatch):
    """What an exported forward runs instead of the fused stage / CGNL's and CC's autograd.Functions (CGNL's also
    under torch.compile) gives the same outputs, input gradients and parameter gradients (float64, training)."""
    x = sample((CHANNELS, *SPATIAL[2])).double()
    grad = sample((CHANNELS, *SPATIAL[2]), seed=5).double()
    results = []
    for captured in (False, True):
        for module in (lib.stage, lib.cgnl, lib.cc):
            monkeypatch.setattr(module, "exporting", lambda captured=captured: captured)
        model = block(name).double().train()
        inp = x.clone().requires_grad_()
        model(inp).backward(grad)
        results.append([model(x), inp.grad] + [p.grad for p in model.parameters()])
    assert compare(results[1], results[0], 1e-10, "captured vs fast path") < 1e-10  # Failure if not


@needs_onnx
@pytest.mark.parametrize("name", ONNX_BLOCKS)
def test_onnx_block(name):
    """ONNX (dynamo exporter) in onnxruntime: dynamic batch, and a second input size, <= 1e-4 relative."""
    shape = (CHANNELS, *SPATIAL[2])
    others = [sample(shape, OTHER_BATCH, seed=1), sample((CHANNELS, *OTHER_SPATIAL[2]), seed=2)]
    assert check_onnx(block(name), sample(shape), others, spatial=True) <= 1e-4


@needs_onnx
def test_onnx_preresnet20_snl():
    torch.manual_seed(0)
    model = randomized(build_model("preresnet", 20, 10, nl_type="snl"))
    assert check_onnx(model, sample((3, 16, 16)), [sample((3, 16, 16), OTHER_BATCH, seed=1)]) <= 1e-4


@needs_onnx
def test_video_model_exports_and_runs_in_onnxruntime():
    """A 3-D ResNet-18 with a space-time SNL block (N = T H W): torch.export and ONNX give the eager logits."""
    torch.manual_seed(0)
    model = randomized(build_model("resnet3d", 18, 10, nl_type="snl", nl_layer=2))
    x, other = sample((3, 4, 32, 32)), sample((3, 4, 32, 32), OTHER_BATCH, seed=1)
    assert check_export(model, x, [other]) <= 1e-5
    assert check_onnx(model, x, [other]) <= 1e-4


@pytest.mark.parametrize("name", list(NONLOCAL_BLOCKS))
def test_meta_then_to_empty_and_reset(name):
    """Built on 'meta' (no memory), moved with to_empty and initialized by reset_parameters(): the same weights
    and buffers as a block built directly from the same RNG state (zero_init included)."""
    torch.manual_seed(3)
    direct = build_nonlocal(name, CHANNELS, PLANES, zero_init=name != "cc")
    meta = build_nonlocal(name, CHANNELS, PLANES, zero_init=name != "cc", device="meta")
    assert all(t.is_meta for t in (*meta.parameters(), *meta.buffers()))
    meta.to_empty(device="cpu")
    torch.manual_seed(3)
    meta.reset_parameters()
    want, got = direct.state_dict(), meta.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key


@pytest.mark.parametrize("name", list(NONLOCAL_BLOCKS))
def test_dtypes(name):
    """dtype=float64 builds float64 parameters and buffers and computes what the float32 block computes with the
    same weights; .to(float64) and bf16 (built so, or converted) run and stay close to float32."""
    x = sample((CHANNELS, *SPATIAL[2]))
    torch.manual_seed(0)
    wide = randomized(build_nonlocal(name, CHANNELS, PLANES, dtype=torch.float64)).eval()
    assert all(t.dtype == torch.float64 for t in (*wide.parameters(), *wide.buffers()) if t.is_floating_point())
    narrow = build_nonlocal(name, CHANNELS, PLANES).eval()
    narrow.load_state_dict(wide.state_dict())
    with torch.no_grad():
        exact = wide(x.double())
        assert exact.dtype == torch.float64
        assert rel_err(narrow(x), exact) < 1e-5
        converted = copy.deepcopy(narrow).to(torch.float64)
        same_weights = build_nonlocal(name, CHANNELS, PLANES, dtype=torch.float64).eval()
        same_weights.load_state_dict(narrow.state_dict())
        assert rel_err(converted(x.double()), same_weights(x.double())) < 1e-12
        half = build_nonlocal(name, CHANNELS, PLANES, dtype=torch.bfloat16).eval()
        half.load_state_dict(wide.state_dict())
        for bf16_block in (half, copy.deepcopy(narrow).to(torch.bfloat16)):
            y = bf16_block(x.bfloat16())
            assert y.dtype == torch.bfloat16 and rel_err(y.float(), exact) < 5e-2


def test_models_on_meta_and_float64():
    for model in (build_model("preresnet", 20, 10, nl_type="snl", device="meta", dtype=torch.float64),
                  build_model("resnet", 50, 10, nl_type="cgnl", nl_nums=5, device="meta"),
                  build_segmentor(nl_type="cc", device="meta")):
        assert all(t.is_meta for t in (*model.parameters(), *model.buffers()))
    assert {p.dtype for p in build_model("preresnet", 20, 10, nl_type="cc", dtype=torch.float64).parameters()} \
        == {torch.float64}


def test_torch_hub(monkeypatch):
    """torch.hub.load from a clone (source='local') for a block and a model; torch.hub.list and help as a user
    of the GitHub repository sees them (the download replaced by this clone)."""
    block_ = torch.hub.load(ROOT, "cgnl", source="local", inplanes=CHANNELS, planes=PLANES, dim=3)
    assert type(block_) is NONLOCAL_BLOCKS["cgnl"] and block_.dim == 3
    model = torch.hub.load(ROOT, "preresnet20_snl", source="local", nl_type="cc", num_classes=7)
    assert model.build_args["nl_type"] == "cc" and model(torch.randn(2, 3, 16, 16)).shape == (2, 7)
    monkeypatch.setattr(torch.hub, "_get_cache_or_reload", lambda *args, **kwargs: ROOT)
    entries = torch.hub.list("owner/snl", verbose=False)
    models = {"preresnet20_snl", "resnet50_snl", "segmentor", "resnet3d50_snl", "r3d18_snl"}
    assert set(NONLOCAL_BLOCKS) | models <= set(entries)
    for entry in entries:
        doc = torch.hub.help("owner/snl", entry)
        assert doc and doc.strip().splitlines()[0].strip(), entry


def test_export_check_table_and_exit_status(capsys, monkeypatch):
    """tools/export_check.py prints one table row per block and dim and exits 0; a failing cell gives FAIL in the
    table and exit status 1."""
    from tools import export_check
    assert export_check.main(["--blocks", "snl", "nl", "--dims", "1", "--models", "--no-onnx", "--no-compile"]) == 0
    out = capsys.readouterr().out
    assert "| snl dim=1 | ok " in out and "| nl dim=1 | ok " in out and "0 of 2 rows failed" in out

    def wrong(model, x, others=()):
        raise export_check.Failure("input (2, 8, 12): relative error 1.0e+00 > 1e-05")
    monkeypatch.setattr(export_check, "check_export", wrong)
    assert export_check.main(["--blocks", "cgnl", "--dims", "3", "--models", "--no-onnx", "--no-compile"]) == 1
    out = capsys.readouterr().out
    assert "| cgnl dim=3 | FAIL input (2, 8, 12): relative error" in out and "1 of 1 rows failed: cgnl dim=3" in out
