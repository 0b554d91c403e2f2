"""Video: the blocks' output_relu option, the 3-D backbones of models/video.py, their weights, and fine-tuning.

Every numerical check is against formulas written here or in tests/direct_formulas.py, in float64.
"""
import pytest
import torch

import direct_formulas as direct
from lib import NONLOCAL_BLOCKS, build_nonlocal
from lib.errors import ConfigError
from lib.registry import stage_based
from tools.gpu_check import randomized

STAGE_KINDS = [kind for kind in NONLOCAL_BLOCKS if stage_based(kind)]


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


@pytest.mark.parametrize("output_relu", [None, True, False])
@pytest.mark.parametrize("kind", STAGE_KINDS)
def test_output_relu_matches_the_direct_formula_in_3d(kind, output_relu):
    """Y = X + relu(BN(pre)) or X + BN(pre), forward and backward, on a (B, C, T, H, W) input with N = 40 >= 4 C'
    (the fused one-unit path where it applies) in train mode."""
    torch.manual_seed(0)
    block = randomized(build_nonlocal(kind, 16, 8, dim=3, output_relu=output_relu)).double().train()
    reference = randomized(build_nonlocal(kind, 16, 8, dim=3, output_relu=output_relu)).double().train()
    reference.load_state_dict(block.state_dict())
    expected_relu = kind != "gsnl" if output_relu is None else output_relu
    assert block.output_relu is expected_relu and all(u.output_relu is expected_relu for u in block.stages)
    x = torch.randn(2, 16, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = block(x), direct.stage_forward(reference, x_ref, kind, output_relu=output_relu)
    assert rel_err(y, y_ref) < 1e-10
    y.square().sum().backward()
    y_ref.square().sum().backward()
    assert rel_err(x.grad, x_ref.grad) < 1e-10
    for (name, p), p_ref in zip(block.named_parameters(), reference.parameters()):
        assert rel_err(p.grad, p_ref.grad) < 1e-10, name


def test_output_relu_false_differs_and_leaves_the_fused_path():
    """Without the ReLU the output has negative residuals (so the option is not ignored), and SNL, whose fused
    kernel computes X + relu(BN(.)) only, takes the module path for it."""
    torch.manual_seed(0)
    x = torch.randn(2, 16, 2, 4, 5, dtype=torch.float64)
    with_relu = randomized(build_nonlocal("snl", 16, 8, dim=3)).double().eval()
    without = randomized(build_nonlocal("snl", 16, 8, dim=3, output_relu=False)).double().eval()
    assert with_relu._fusable(x) and not without._fusable(x)
    with torch.no_grad():
        assert (with_relu(x) - x).min() >= 0 and (without(x) - x).min() < 0
    assert "output_relu=False" in repr(without) and "output_relu" not in repr(with_relu)


@pytest.mark.parametrize("kind", ["cgnl", "cc"])
def test_output_relu_is_refused_for_blocks_without_a_stage(kind):
    with pytest.raises(ConfigError, match=f"output_relu applies to the stage-based blocks only, not to '{kind}'"):
        build_nonlocal(kind, 16, 8, output_relu=False)
    with pytest.raises(ConfigError, match="output_relu must be True, False or None"):
        build_nonlocal("snl", 16, 8, output_relu="False")
