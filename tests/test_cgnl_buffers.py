"""CGNL keeps its Taylor coefficients alpha_k^2 on the device (issue 25): no list is copied host-to-device in its
forward or backward (on a GPU each such copy blocks the host), and its state_dict keys stay the reference's."""
import math

import pytest
import torch

from lib import build_nonlocal
from lib.cgnl import CGNL

REFERENCE_KEYS = ["t.weight", "p.weight", "g.weight", "z.weight", "gn.weight", "gn.bias"]


def _expected_weights(block):
    return [a * a for a in block.alpha]


def test_no_list_is_copied_to_the_device_in_forward_or_backward(monkeypatch):
    torch.manual_seed(0)
    block = build_nonlocal("cgnl", 16, 8).train()
    x = torch.randn(2, 16, 6, 5, requires_grad=True)
    calls = []
    for name in ("new_tensor",):
        original = getattr(torch.Tensor, name)

        def recording(self, data, *args, _original=original, _name=name, **kwargs):
            calls.append((_name, type(data).__name__))
            return _original(self, data, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, recording)
    original_tensor = torch.tensor

    def recording_tensor(data, *args, **kwargs):
        calls.append(("torch.tensor", type(data).__name__))
        return original_tensor(data, *args, **kwargs)
    monkeypatch.setattr(torch, "tensor", recording_tensor)
    block(x).square().sum().backward()
    assert calls == [], f"CGNL built tensors from host data in its forward/backward: {calls}"
    assert x.grad is not None and all(p.grad is not None for p in block.parameters())


def test_state_dict_keys_are_unchanged_and_the_buffer_is_not_persistent():
    block = build_nonlocal("cgnl", 16, 8)
    assert sorted(block.state_dict()) == sorted(REFERENCE_KEYS)
    assert "taylor_weights" in dict(block.named_buffers())
    fresh = build_nonlocal("cgnl", 16, 8)
    fresh.load_state_dict(block.state_dict(), strict=True)  # a reference-layout state_dict loads strictly


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_buffer_holds_alpha_squared_in_full_precision_after_casts_and_to_empty(order):
    block = CGNL(16, 8, order=order)
    expected = torch.tensor(_expected_weights(block), dtype=torch.float64)
    assert torch.equal(block.taylor_weights.double(), expected)
    block.half()  # a cast of the module must not round the coefficients (alpha_2^2 ~ 2e-8 underflows float16)
    assert block.taylor_weights.dtype == torch.float64 and torch.equal(block.taylor_weights, expected)
    meta = CGNL(16, 8, order=order, device="meta").to_empty(device="cpu")
    assert torch.equal(meta.taylor_weights, expected)


def test_same_output_as_the_coefficients_from_python_floats():
    """The buffer gives the numbers the per-call lists gave (float64, where the exactness tests compute)."""
    from lib.cgnl import taylor_kernel
    torch.manual_seed(0)
    features = torch.randn(3, 24, 20, dtype=torch.float64)
    block = CGNL(16, 8)
    via_buffer = taylor_kernel(features, block.taylor_weights)
    via_list = taylor_kernel(features, _expected_weights(block))
    assert torch.equal(via_buffer, via_list)
    assert math.isclose(block.taylor_weights[0].item(), math.exp(-2 * 1e-4))
