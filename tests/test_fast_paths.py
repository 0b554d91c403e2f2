"""The fast paths: fused-attention softmax affinities, CGNL's Taylor kernel, CC's attention core, their input
checks and dims, CC's reference checkpoint layout, and tools/gpu_check.py's CPU behaviour."""
import copy
import os
import subprocess
import sys

import direct_formulas as direct
import pytest
import torch
from test_blocks import saved_bytes
from torch.nn.attention import SDPBackend, sdpa_kernel

from lib import ConfigError, build_nonlocal
from lib.affinity import DenseAffinity, SoftmaxAffinity, build_affinity
from lib.cc import CCStage
from lib.cgnl import CGNL
from models import build_model, load_state_dict_checked
from tools._checks import randomized

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOFTMAX_KINDS = ("nl", "ns", "dnl")


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def forward_backward(module, x, grad_seed=1):
    """(y, dL/dx, [dL/dp]) for L = <y, G> with a fixed random G."""
    x = x.detach().clone().requires_grad_()
    y = module(x)
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=y.dtype)
    y.backward(grad)
    return [y.detach(), x.grad] + [p.grad for p in module.parameters()]


# --- softmax affinities by fused attention -------------------------------------------------------------------


@pytest.mark.parametrize("kind", SOFTMAX_KINDS)
@pytest.mark.parametrize("is_sys", [False, True])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("stage_num", [1, 2, 3])
def test_fused_softmax_matches_the_dense_path(kind, is_sys, train, stage_num):
    x = torch.randn(3, 16, 5, 6, dtype=torch.float64)
    results = {}
    for path in ("auto", "dense"):
        torch.manual_seed(0)
        block = build_nonlocal(kind, 16, 8, stage_num=stage_num, is_sys=is_sys, affinity_path=path)
        block = randomized(block).double().train(train)
        expected = SoftmaxAffinity if path == "auto" else DenseAffinity
        assert isinstance(block.affinity(x), expected)
        results[path] = forward_backward(block, x)
    for fused, dense in zip(results["auto"], results["dense"]):
        assert rel_err(fused, dense) < 1e-10


@pytest.mark.parametrize("kind", SOFTMAX_KINDS)
@pytest.mark.parametrize("is_sys", [False, True])
def test_fused_softmax_runs_the_fused_kernel(kind, is_sys):
    """With only the flash kernel allowed, an operand it cannot take (a transposed view, unequal head widths)
    raises instead of silently falling back to the unfused path that forms A."""
    torch.manual_seed(0)
    block = build_nonlocal(kind, 16, 8, stage_num=2, is_sys=is_sys)
    x = torch.randn(2, 16, 6, 5, requires_grad=True)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        block(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_fused_softmax_keeps_no_n_by_n_tensor_for_the_backward():
    x = torch.randn(2, 16, 16, 16, requires_grad=True)  # N = 256: A alone would be 16x the size of x
    torch.manual_seed(0)
    fused = saved_bytes(build_nonlocal("nl", 16, 8), x)
    torch.manual_seed(0)
    dense = saved_bytes(build_nonlocal("nl", 16, 8, affinity_path="dense"), x)
    assert fused < 8 * x.numel() * x.element_size() < dense


@pytest.mark.parametrize("is_sys", [False, True])
def test_dense_of_the_fused_operator_is_the_dense_paths_matrix(is_sys):
    theta, phi = torch.randn(2, 4, 3, 5, dtype=torch.float64), torch.randn(2, 4, 3, 5, dtype=torch.float64)
    fused = build_affinity(theta, phi, is_sys, False, False, "auto")
    dense = build_affinity(theta, phi, is_sys, False, False, "dense")
    torch.testing.assert_close(fused.dense(), dense.dense(), rtol=1e-12, atol=1e-14)
    th, ph = theta.flatten(2).transpose(1, 2), phi.flatten(2).transpose(1, 2)  # (B, N, C')
    logits = th @ ph.transpose(1, 2)
    if is_sys:
        logits = (logits + logits.transpose(1, 2)) / 2
    torch.testing.assert_close(fused.dense(), torch.softmax(logits, -1), rtol=1e-12, atol=1e-14)
    z = torch.randn(2, 15, 3, dtype=torch.float64)
    torch.testing.assert_close(fused.apply(z), torch.softmax(logits, -1) @ z, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shape", [(2, 4, 12), (2, 4, 2, 3, 2)])
def test_build_affinity_takes_any_number_of_spatial_dims(shape):
    theta, phi = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    z = torch.randn(2, 12, 4, dtype=torch.float64)
    for args in [(False, False, False), (True, False, False), (True, True, False), (False, False, True)]:
        for path in ("auto", "dense"):
            got = build_affinity(theta, phi, *args, path)
            want = build_affinity(theta.reshape(2, 4, 3, 4), phi.reshape(2, 4, 3, 4), *args, path)
            torch.testing.assert_close(got.apply(z), want.apply(z), rtol=0, atol=0)


@pytest.mark.parametrize("kind", SOFTMAX_KINDS)
@pytest.mark.parametrize("is_sys", [False, True])
def test_fused_softmax_under_bf16_autocast(kind, is_sys):
    torch.manual_seed(0)
    block = randomized(build_nonlocal(kind, 16, 8, is_sys=is_sys))
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    y32 = block(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16 = block(x)
        att = block.affinity(x)
        aggregated = att.apply_channels_first(torch.randn(2, 8, 64).bfloat16())
    assert isinstance(att, SoftmaxAffinity) and att.dense().dtype == torch.float32
    assert aggregated.dtype == torch.float32  # the affinity product runs in float32
    y16.float().sum().backward()
    assert torch.isfinite(y16.float()).all() and torch.isfinite(x.grad).all()
    assert rel_err(y16.float(), y32) < 3e-2


def test_factorized_path_of_the_softmax_affinity_points_to_auto():
    theta = torch.randn(1, 4, 3, 3)
    with pytest.raises(ValueError, match="no factorized form.*'auto'"):
        build_affinity(theta, theta, False, False, False, "factorized")


# --- CGNL ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_cgnl_matches_the_direct_formula_with_parameter_gradients(order):
    torch.manual_seed(0)
    block = randomized(CGNL(16, 8, order=order, gamma=0.05)).double()
    reference = copy.deepcopy(block)
    x = torch.randn(2, 16, 5, 6, dtype=torch.float64)
    got = forward_backward(block, x)
    x_ref = x.clone().requires_grad_()
    y_ref = direct.cgnl_forward(reference, x_ref, order=order, gamma=0.05)
    y_ref.backward(torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(1), dtype=y_ref.dtype))
    for mine, theirs in zip(got, [y_ref, x_ref.grad] + [p.grad for p in reference.parameters()]):
        # + 1e-12: at order 0 the kernel is constant over positions and GroupNorm all but cancels z's gradient
        assert (mine - theirs).norm() <= 1e-10 * theirs.norm() + 1e-12


@pytest.mark.parametrize("dim,shape", [(1, (2, 16, 30)), (3, (2, 16, 2, 3, 5))])
def test_cgnl_in_1d_and_3d_equals_2d_on_the_same_positions(dim, shape):
    torch.manual_seed(0)
    block2 = randomized(CGNL(16, 8)).double()
    block = CGNL(16, 8, dim=dim).double()
    state = {k: v.reshape(block.state_dict()[k].shape) for k, v in block2.state_dict().items()}
    block.load_state_dict(state)  # the same numbers; the 1x1 weights carry dim trailing singleton dims
    assert block.t.weight.shape == (8, 16) + (1,) * dim
    x = torch.randn(shape, dtype=torch.float64)
    got = forward_backward(block, x)
    want = forward_backward(block2, x.reshape(2, 16, 5, 6))
    for mine, theirs in zip(got, want):
        assert rel_err(mine.reshape(theirs.shape), theirs) < 1e-12


# --- CC ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hw", [(4, 5), (1, 3), (3, 1)])
def test_criss_cross_parameter_gradients_match_the_direct_formula(hw):
    torch.manual_seed(0)
    module = randomized(CCStage(16, 8))[0].double()
    reference = copy.deepcopy(module)
    x = torch.randn(2, 16, *hw, dtype=torch.float64)
    got = forward_backward(module, x)
    x_ref = x.clone().requires_grad_()
    y_ref = direct.criss_cross_forward(reference, x_ref)
    y_ref.backward(torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(1), dtype=y_ref.dtype))
    for mine, theirs in zip(got, [y_ref, x_ref.grad] + [p.grad for p in reference.parameters()]):
        # + 1e-12: the key bias adds the same logit to every key of a query, so its gradient is 0 up to rounding
        assert (mine - theirs).norm() <= 1e-10 * theirs.norm() + 1e-12


def test_cc_is_two_dimensional_only():
    with pytest.raises(ConfigError) as error:
        CCStage(16, 8, dim=3)
    assert "dim 2" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("kind,shape,message", [
    ("cgnl", (2, 32, 8, 8), "cgnl block expects input (B, 64, H, W), got (2, 32, 8, 8)"),
    ("cgnl", (2, 64, 8), "cgnl block expects input (B, 64, H, W), got (2, 64, 8)"),
    ("cc", (2, 32, 8, 8), "cc block expects input (B, 64, H, W), got (2, 32, 8, 8)"),
    ("cc", (2, 64, 2, 8, 8), "cc block expects input (B, 64, H, W), got (2, 64, 2, 8, 8)"),
])
def test_wrong_input_gives_one_clear_line(kind, shape, message):
    block = build_nonlocal(kind, 64, 32)
    with pytest.raises(ConfigError) as error:
        block(torch.zeros(shape))
    assert str(error.value) == message


def test_cgnl_wrong_input_names_its_dim():
    with pytest.raises(ConfigError, match=r"expects input \(B, 16, T, H, W\), got \(2, 16, 4, 4\)"):
        CGNL(16, 8, dim=3)(torch.zeros(2, 16, 4, 4))
    with pytest.raises(ConfigError, match="dim must be 1, 2 or 3"):
        CGNL(16, 8, dim=4)


REFERENCE_CC_KEYS = ["query_conv.weight", "query_conv.bias", "key_conv.weight", "key_conv.bias",
                     "value_conv.weight", "value_conv.bias", "gamma"]


def test_reference_preresnet_cc_checkpoint_loads_and_gives_the_same_logits(capsys):
    """The reference stores a CC stage as a plain nn.Sequential: PreResNet-20's block keys are
    layer1.2.<k>.query_conv.weight, ...; its checkpoints also hold the unused conv1 (3 -> 64) and fc
    (2048 -> 10) next to the 1000-way fc2 it trains."""
    torch.manual_seed(0)
    source = randomized(build_model("preresnet", 20, 1000, nl_type="cc", stage_num=2)).eval()
    weights = source.state_dict()
    block_keys = sorted(k for k in weights if k.startswith("layer1.2."))
    assert block_keys == sorted(f"layer1.2.{unit}.{name}" for unit in (0, 1) for name in REFERENCE_CC_KEYS)
    checkpoint = {"module." + k: v.clone() for k, v in weights.items()}  # saved under DataParallel
    checkpoint["module.conv1.weight"] = torch.randn(64, 3, 3, 3)
    checkpoint["module.fc.weight"], checkpoint["module.fc.bias"] = torch.randn(10, 2048), torch.randn(10)
    model = build_model("preresnet", 20, 1000, nl_type="cc", stage_num=2)
    load_state_dict_checked(model, checkpoint)
    assert "conv1.weight" in capsys.readouterr().out
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), source(x))


# --- tools/gpu_check.py --------------------------------------------------------------------------------------


@pytest.fixture()
def gpu_check():
    from tools import gpu_check
    return gpu_check


def test_gpu_check_without_cuda_fails_in_one_line(gpu_check, monkeypatch, capsys):
    """A broken driver or an empty CUDA_VISIBLE_DEVICES is no checked GPU machine: exit 1, one line."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "no CUDA" in captured.err


def test_gpu_check_script_without_cuda_exits_non_zero():
    result = subprocess.run([sys.executable, "tools/gpu_check.py", "--checks", "fused-snl"], capture_output=True,
                            text=True, cwd=ROOT, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""), timeout=120)
    assert result.returncode == 1 and "no CUDA" in result.stderr


def test_gpu_check_a_skipped_check_fails_on_a_gpu_but_not_in_the_smoke_mode(gpu_check):
    rows = [("blocks", "ok", ""), ("ddp", "skip", "needs 2+ GPUs"), ("bench", "FAIL", "boom")]
    assert gpu_check.not_passed(rows, smoke=False) == ["ddp (skipped)", "bench"]
    assert gpu_check.not_passed(rows, smoke=True) == ["bench"]


def test_gpu_check_a_softmax_block_that_skips_sdpa_fails(gpu_check, monkeypatch, capsys):
    """gsnl is among the fused-attention checks, and sdpa_kernel alone would pass a block that never calls SDPA."""
    monkeypatch.setattr(gpu_check, "block_variants", lambda: iter([("gsnl", "gsnl", {})]))
    assert gpu_check.main(["--device", "cpu", "--checks", "blocks"]) == 0
    assert "| block gsnl | ok |" in capsys.readouterr().out and "gsnl" in gpu_check.SOFTMAX_KINDS

    class NoCall:
        def __enter__(self):
            return []

        def __exit__(self, *exc):
            pass
    monkeypatch.setattr(gpu_check, "counting_sdpa", NoCall)
    assert gpu_check.main(["--device", "cpu", "--checks", "blocks"]) == 1
    assert "never called scaled_dot_product_attention" in capsys.readouterr().out


def test_gpu_check_counts_graph_breaks(gpu_check):
    class Breaks(torch.nn.Module):
        def forward(self, x):
            x = x + 1
            torch._dynamo.graph_break()
            return x * 2

    assert gpu_check.graph_breaks(torch.nn.Linear(4, 4), torch.randn(2, 4))[0] == 0
    assert gpu_check.graph_breaks(Breaks(), torch.randn(2, 4))[0] == 1


def test_gpu_check_ddp_verdict_looks_at_the_results(gpu_check, monkeypatch):
    single = dict(n=128, train_loss=2.0, loss=1.9)
    monkeypatch.setattr(gpu_check, "final_checkpoint", lambda run: dict(world_size=2, rng_states=[{}, {}]))
    gpu_check.ddp_processes_agree(single, dict(single, train_loss=2.02), "run")
    for wrong in (dict(single, n=256), dict(single, train_loss=2.3), dict(single, loss=2.5)):
        with pytest.raises(gpu_check.Failed):
            gpu_check.ddp_processes_agree(single, wrong, "run")
    monkeypatch.setattr(gpu_check, "final_checkpoint", lambda run: dict(world_size=1, rng_states=[{}]))
    with pytest.raises(gpu_check.Failed, match="not 2"):
        gpu_check.ddp_processes_agree(single, single, "run")


def test_gpu_check_entry_points_are_one_line_each_and_exist(gpu_check):
    scripts = [script for script, _ in gpu_check.ENTRY_POINTS]
    assert {"train_val.py", "train_seg.py", "train_video.py"} <= set(scripts)
    assert all(os.path.isfile(os.path.join(ROOT, script)) for script in scripts)


def test_gpu_check_cpu_smoke_mode_prints_one_table(gpu_check, capsys):
    assert gpu_check.main(["--device", "cpu", "--checks", "blocks", "fused-snl"]) == 0
    out = capsys.readouterr().out
    assert out.count("| check | result | detail |") == 1
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) >= 8 and all("| ok |" in row for row in rows), out


def test_gpu_check_fails_loudly(gpu_check, monkeypatch, capsys):
    def broken(block, dim=2):
        raise RuntimeError("boom")

    monkeypatch.setattr(gpu_check, "float64_reference", broken)
    assert gpu_check.main(["--device", "cpu", "--checks", "blocks"]) == 1
    assert "| FAIL | RuntimeError: boom" in capsys.readouterr().out
