"""The nonlocal blocks of lib/: shapes, gradients, exactness of both affinity paths, the math itself."""
import math

import direct_formulas as direct
import pytest
import torch

from lib import NONLOCAL_BLOCKS, ConfigError, build_nonlocal
from lib.affinity import DenseAffinity, ReluDotAffinity, SoftmaxAffinity, build_affinity
from tools._checks import randomized

FIRST_STAGE_KINDS = ("snl", "nl", "a2", "ns", "dnl")  # the spectral family's own tests: tests/test_filters.py
STAGE_KINDS = FIRST_STAGE_KINDS + ("cheb", "gsnl", "cayley", "arma")
RELU_DOT_KINDS = ("snl", "a2")  # the blocks with a factorized path


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make_block(kind, c=16, planes=8, **kwargs):
    torch.manual_seed(0)
    return randomized(build_nonlocal(kind, c, planes, **kwargs))


# --- every registered block --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(NONLOCAL_BLOCKS))
def test_shape_kept_and_gradients_reach_every_parameter(kind):
    block = make_block(kind, stage_num=2)
    x = torch.randn(2, 16, 5, 7, requires_grad=True)  # H != W
    y = block(x)
    assert y.shape == x.shape
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"


@pytest.mark.parametrize("kind", list(NONLOCAL_BLOCKS))
@pytest.mark.parametrize("shape", [(1, 16, 4, 6), (2, 16, 1, 1), (1, 16, 1, 3)])
def test_batch_one_and_single_position(kind, shape):
    block = make_block(kind)
    x = torch.randn(shape)
    # BatchNorm cannot take train-mode statistics from a single value per channel; eval mode must still work.
    if shape[0] * shape[2] * shape[3] > 1:
        y = block.train()(x)
        assert y.shape == x.shape and torch.isfinite(y).all()
    y = block.eval()(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


@pytest.mark.parametrize("kind", list(NONLOCAL_BLOCKS))
def test_zero_init_starts_as_identity(kind):
    torch.manual_seed(0)
    block = build_nonlocal(kind, 16, 8, zero_init=True)
    x = torch.randn(2, 16, 4, 4)
    torch.testing.assert_close(block.train()(x), x, rtol=0, atol=0)
    assert not torch.equal(make_block(kind)(x), x)  # and a block that is not zero-initialized is not


PINNED_KEYS = {
    "snl": ["t.weight", "p.weight", "stages.0.g.weight", "stages.0.w_1.weight", "stages.0.w_2.weight"],
    "nl": ["t.weight", "p.weight", "stages.0.g.weight", "stages.0.w_2.weight"],
    "a2": ["t.weight", "p.weight", "stages.0.g.weight", "stages.0.w_2.weight"],
    "ns": ["t.weight", "p.weight", "stages.0.g.weight", "stages.0.w_2.weight"],
    "dnl": ["t.weight", "p.weight", "stages.0.g.weight", "stages.0.w_m.weight", "stages.0.w_2.weight"],
    "cgnl": ["t.weight", "p.weight", "g.weight", "z.weight", "gn.weight", "gn.bias"],
    "cheb": ["t.weight", "p.weight", "stages.0.g.weight", "stages.0.w_1.weight", "stages.0.w_2.weight",
             "stages.0.w_3.weight"],
    "gsnl": ["t.weight", "p.weight", "stages.0.g.weight", "stages.0.w_1.weight", "stages.0.w_2.weight",
             "stages.0.w_3.weight"],
    "cayley": ["t.weight", "p.weight", "stages.0.g.weight", "stages.0.w_1.weight", "stages.0.w_2.weight",
               "stages.0.w_h.weight"],
    "arma": ["t.weight", "p.weight", "stages.0.g.weight", "stages.0.w_a.weight", "stages.0.v.weight",
             "stages.0.w_o.weight"],
    "cc": ["0.query_conv.weight", "0.query_conv.bias", "0.key_conv.weight", "0.key_conv.bias",
           "0.value_conv.weight", "0.value_conv.bias", "0.gamma"],
}
BN_KEYS = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]


@pytest.mark.parametrize("kind", list(NONLOCAL_BLOCKS))
def test_state_dict_keys_are_the_references(kind):
    expected = set(PINNED_KEYS[kind])
    if kind in STAGE_KINDS:
        expected |= {f"stages.0.bn.{k}" for k in BN_KEYS}
    block = build_nonlocal(kind, 16, 8)
    assert set(block.state_dict()) == expected
    block.load_state_dict({k: v.clone() for k, v in block.state_dict().items()}, strict=True)


def test_unknown_block_lists_the_valid_names():
    with pytest.raises(ConfigError, match="snl, nl, a2, ns, dnl, cgnl, cc, cheb, gsnl, cayley, arma"):
        build_nonlocal("gcnet", 16, 8)


# --- the math against the equations (docs/blocks.md) ------------------------------------------------------------


def test_snl_affinity_by_hand():
    """N = 2 positions, C' = 1: theta = (1, 2), phi = (1, 1).
    M = theta phi^T = [[1, 1], [2, 2]]; symmetric: [[1, 1.5], [1.5, 2]]; d = (2.5, 3.5); A_ij = M_ij / sqrt(d_i d_j)."""
    theta = torch.tensor([1.0, 2.0], dtype=torch.float64).reshape(1, 1, 1, 2)
    phi = torch.tensor([1.0, 1.0], dtype=torch.float64).reshape(1, 1, 1, 2)
    expected = torch.tensor([[1 / 2.5, 1.5 / math.sqrt(2.5 * 3.5)],
                             [1.5 / math.sqrt(2.5 * 3.5), 2 / 3.5]], dtype=torch.float64)
    for path in ("dense", "factorized"):
        att = build_affinity(theta, phi, is_sys=True, is_norm=True, relu_kernel=False, path=path)
        torch.testing.assert_close(att.dense()[0], expected)
        z = torch.tensor([[3.0], [-1.0]], dtype=torch.float64)
        torch.testing.assert_close(att.apply(z[None])[0], expected @ z)


def stage_kwargs():
    cases = []
    for kind in FIRST_STAGE_KINDS:
        for is_sys in (None, True, False):
            for is_norm in (None, True, False):
                cases.append(pytest.param(kind, is_sys, is_norm, id=f"{kind}-sys{is_sys}-norm{is_norm}"))
    return cases


@pytest.mark.parametrize("kind,is_sys,is_norm", stage_kwargs())
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("stage_num", [1, 2])  # 1: the fused one-unit path where the affinity factorizes
def test_stage_matches_the_direct_formula(kind, is_sys, is_norm, train, stage_num):
    block = make_block(kind, stage_num=stage_num, is_sys=is_sys, is_norm=is_norm).double().train(train)
    reference = make_block(kind, stage_num=stage_num, is_sys=is_sys, is_norm=is_norm).double().train(train)
    x = torch.randn(3, 16, 6, 7, dtype=torch.float64, requires_grad=True)  # N = 42 >= 4 C': fusable
    x_ref = x.detach().clone().requires_grad_()
    y = block(x)
    y_ref = direct.stage_forward(reference, x_ref, kind)
    assert rel_err(y, y_ref) < 1e-10
    y.square().sum().backward()
    y_ref.square().sum().backward()
    assert rel_err(x.grad, x_ref.grad) < 1e-10
    for (name, p), p_ref in zip(block.named_parameters(), reference.parameters()):
        assert rel_err(p.grad, p_ref.grad) < 1e-10, name
    if train:  # the running statistics move the same way (F.batch_norm does not count batches)
        for (name, b), b_ref in zip(block.named_buffers(), reference.buffers()):
            if not name.endswith("num_batches_tracked"):
                torch.testing.assert_close(b, b_ref, msg=name)


def test_defaults_are_the_papers():
    assert (build_nonlocal("snl", 8, 4).is_sys, build_nonlocal("snl", 8, 4).is_norm) == (True, True)
    for kind in ("nl", "a2", "ns", "dnl"):
        block = build_nonlocal(kind, 8, 4)
        assert (block.is_sys, block.is_norm) == (False, False)


@pytest.mark.parametrize("path", ["dense", "factorized"])
def test_zero_degree_position_gives_zeros_not_nan(path):
    """A position whose input is 0 has theta = phi = 0 (the 1x1 convs have no bias), so its degree is 0:
    s = 0 there, its row and column of A are 0, and nothing becomes NaN, forward or backward."""
    block = make_block("snl", affinity_path=path).double()
    x = torch.randn(2, 16, 4, 5, dtype=torch.float64)
    x[:, :, 1, 2] = 0
    x.requires_grad_()
    att = block.affinity(x).dense()
    assert torch.all(att[:, 7, :] == 0) and torch.all(att[:, :, 7] == 0)  # position (1, 2) = index 7
    y = block(x)
    y_ref = direct.stage_forward(block, x.detach(), "snl")
    assert rel_err(y, y_ref) < 1e-10
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in block.parameters())


def test_all_zero_input_is_finite():
    block = make_block("snl", affinity_path="factorized")
    x = torch.zeros(2, 16, 3, 3, requires_grad=True)
    block(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_cgnl_matches_the_direct_formula():
    block = make_block("cgnl").double()
    x = torch.randn(2, 16, 5, 6, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = block(x), direct.cgnl_forward(block, x_ref)
    assert rel_err(y, y_ref) < 1e-10
    y.square().sum().backward()
    y_ref.square().sum().backward()
    assert rel_err(x.grad, x_ref.grad) < 1e-10


@pytest.mark.parametrize("hw", [(4, 5), (1, 3), (3, 1), (1, 1)])
def test_criss_cross_matches_the_direct_formula(hw):
    block = make_block("cc").double()
    module = block[0]
    x = torch.randn(2, 16, *hw, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = module(x), direct.criss_cross_forward(module, x_ref)
    assert rel_err(y - x, y_ref - x_ref) < 1e-10
    y.square().sum().backward()
    y_ref.square().sum().backward()
    assert rel_err(x.grad, x_ref.grad) < 1e-10


# --- the two affinity paths ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", RELU_DOT_KINDS)
@pytest.mark.parametrize("planes,hw", [(4, (8, 8)), (8, (4, 5)), (16, (3, 3)), (2, (1, 1))])
@pytest.mark.parametrize("stage_num", [1, 2, 3])
@pytest.mark.parametrize("is_sys", [True, False])
@pytest.mark.parametrize("train", [True, False])
def test_dense_and_factorized_paths_agree(kind, planes, hw, stage_num, is_sys, train):
    # batch 3: with 2 samples and one position, train-mode BN leaves only rounding noise in some gradients
    x = torch.randn(3, 16, *hw, dtype=torch.float64)
    outs = {}
    for path in ("dense", "factorized"):
        block = make_block(kind, planes=planes, stage_num=stage_num, is_sys=is_sys, affinity_path=path)
        block = block.double().train(train)
        xi = x.clone().requires_grad_()
        y = block(xi)
        y.square().sum().backward()
        outs[path] = [y, xi.grad] + [p.grad for p in block.parameters()]
    for dense, factorized in zip(outs["dense"], outs["factorized"]):
        # + 1e-12: at N = 1 the normalized A is identically 1, so the t / p gradients are 0 up to rounding
        assert (factorized - dense).norm() <= 1e-5 * dense.norm() + 1e-12


def test_auto_path_picks_the_factorized_form_when_positions_outnumber_channels():
    theta = torch.randn(1, 8, 4, 4)
    assert isinstance(build_affinity(theta, theta, True, True, False, "auto"), ReluDotAffinity)  # N 16 >= 8
    theta = torch.randn(1, 32, 4, 4)
    assert isinstance(build_affinity(theta, theta, True, True, False, "auto"), DenseAffinity)  # N 16 < 32
    assert isinstance(build_affinity(theta, theta, False, False, False, "auto"), SoftmaxAffinity)  # fused


def test_softmax_affinity_refuses_the_factorized_path():
    with pytest.raises(ValueError, match="no factorized form"):
        build_nonlocal("nl", 16, 8, affinity_path="factorized")
    with pytest.raises(ValueError, match="affinity_path must be one of"):
        build_nonlocal("snl", 16, 8, affinity_path="fast")


# --- spectral and normalization properties -------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_snl_affinity_is_symmetric_with_laplacian_spectrum_in_0_2(seed):
    torch.manual_seed(seed)
    block = build_nonlocal("snl", 16, 8).double()
    x = torch.randn(2, 16, 6, 5, dtype=torch.float64)
    att = block.affinity(x).dense()
    torch.testing.assert_close(att, att.transpose(1, 2))
    eig = torch.linalg.eigvalsh(torch.eye(att.shape[1], dtype=att.dtype) - att)
    assert eig.min() >= -1e-10 and eig.max() <= 2 + 1e-10
    assert eig.min().abs() < 1e-8  # the smallest is 0: s is an eigenvector of A with eigenvalue 1


@pytest.mark.parametrize("kind", ["nl", "ns", "dnl"])
def test_softmax_affinity_rows_sum_to_one(kind):
    block = make_block(kind)
    att = block.affinity(torch.randn(2, 16, 4, 3)).dense()
    torch.testing.assert_close(att.sum(-1), torch.ones(2, 12))


# --- mixed precision -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(NONLOCAL_BLOCKS))
def test_bf16_autocast_is_finite_and_close_to_fp32(kind):
    block = make_block(kind).eval()
    x = torch.randn(2, 16, 8, 8)
    y32 = block(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16 = block(x)
        att = block.affinity(x) if kind in STAGE_KINDS else None
    assert torch.isfinite(y16).all()
    assert rel_err(y16.float(), y32) < 3e-2
    if att is not None:  # the affinity itself stays in float32 under autocast
        assert att.dense().dtype == torch.float32


# --- the fused one-unit path (lib/stage.py, FusedReluDotStage) ----------------------------------------------


@pytest.mark.parametrize("kind", ["snl", "a2", "ns"])
@pytest.mark.parametrize("is_sys", [True, False])
def test_fused_path_matches_the_dense_path_at_degenerate_positions(kind, is_sys):
    """A zero input position (degree 0, s = 0) and a dead phi channel (its column sum is 0, so one entry of
    q = S (F 1) is 0 while relu(theta) there is not): the hand-written backward must still be exact."""
    x = torch.randn(3, 16, 6, 7, dtype=torch.float64)
    x[:, :, 2, 3] = 0
    results = []
    for path in ("factorized", "dense"):
        block = make_block(kind, is_sys=is_sys, is_norm=True, affinity_path=path).double()
        with torch.no_grad():
            block.p.weight[0] = 0
        assert block._fusable(x) == (path == "factorized")
        xi = x.clone().requires_grad_()
        y = block(xi)
        y.square().sum().backward()
        results.append([y, xi.grad] + [p.grad for p in block.parameters()])
    for fused, dense in zip(*results):
        assert rel_err(fused, dense) < 1e-10


@pytest.mark.parametrize("kind", list(NONLOCAL_BLOCKS))
def test_channels_last_input_gives_the_same_numbers(kind):
    block = make_block(kind).double()
    x = torch.randn(2, 16, 6, 7, dtype=torch.float64)
    grads = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        xi = x.detach().to(memory_format=memory_format).requires_grad_()
        y = block(xi)
        y.square().sum().backward()
        grads.append((y, xi.grad))
    assert rel_err(grads[1][0], grads[0][0]) < 1e-12 and rel_err(grads[1][1], grads[0][1]) < 1e-12


def saved_bytes(block, x):
    """Bytes of the distinct storages autograd keeps for the backward of block(x)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x)
    return sum(storages.values())


@pytest.mark.parametrize("kind", ["snl", "a2"])
def test_fused_path_keeps_about_one_input_for_the_backward(kind):
    """The fused path keeps X, a 1-byte ReLU mask (X / 4 in float32), s (X / C) and (B, C, 2C')-sized
    matrices; the module-by-module path keeps about six feature maps."""
    x = torch.randn(4, 16, 16, 16, requires_grad=True)
    fused = saved_bytes(make_block(kind, affinity_path="factorized"), x)
    assert fused <= 1.5 * x.numel() * x.element_size()
    unfused = saved_bytes(make_block(kind, stage_num=2, affinity_path="factorized"), x) / 2  # per unit, roughly
    assert fused < unfused


@pytest.mark.parametrize("momentum,track", [(None, True), (0.3, False)])
def test_fused_path_keeps_batch_norm_bookkeeping(momentum, track):
    """Cumulative-average BN (momentum None) and BN without running statistics, over two training steps and
    an eval step: the fused path updates and uses the statistics exactly as nn.BatchNorm2d does."""
    blocks = []
    for path in ("factorized", "dense"):
        block = make_block("snl", affinity_path=path).double()
        block.stages[0].bn = torch.nn.BatchNorm2d(16, momentum=momentum, track_running_stats=track).double()
        blocks.append(block)
    assert blocks[0]._fusable(torch.zeros(3, 16, 6, 7))
    for train in (True, True, False):
        x = torch.randn(3, 16, 6, 7, dtype=torch.float64)
        ys = [block.train(train)(x) for block in blocks]
        assert rel_err(ys[0], ys[1]) < 1e-10
    for (name, b), b_ref in zip(blocks[0].named_buffers(), blocks[1].buffers()):
        torch.testing.assert_close(b, b_ref, msg=name)


def test_a_replaced_batch_norm_keeps_its_own_forward():
    """--sync-bn swaps the BN modules for subclasses that all-reduce their statistics: the fused path, which
    calls the BN kernel itself, must step aside for them."""
    calls = []

    class RecordingBatchNorm(torch.nn.BatchNorm2d):
        def forward(self, x):
            calls.append(x.shape)
            return super().forward(x)

    block = make_block("snl")
    block.stages[0].bn = RecordingBatchNorm(16)
    block(torch.randn(2, 16, 4, 4))
    assert calls == [torch.Size([2, 16, 4, 4])]


@pytest.mark.parametrize("kind", list(NONLOCAL_BLOCKS))
def test_bf16_input_under_autocast_trains(kind):
    """Inside an autocast network the block's input is already bf16 while its weights stay float32."""
    block = make_block(kind)
    x = torch.randn(2, 16, 8, 8).bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(x)
    y.float().square().sum().backward()
    assert torch.isfinite(y.float()).all() and torch.isfinite(x.grad.float()).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())


def test_the_fused_path_is_taken_exactly_where_it_applies():
    """What the one-unit cases of test_stage_matches_the_direct_formula exercise (x: 16 channels, 6 x 7)."""
    x = torch.zeros(3, 16, 6, 7)
    assert make_block("snl")._fusable(x) and make_block("a2")._fusable(x)
    assert make_block("ns", is_norm=True)._fusable(x)
    assert not make_block("snl", stage_num=2)._fusable(x)  # units after the first need A itself
    assert not make_block("snl", affinity_path="dense")._fusable(x)
    assert not make_block("nl")._fusable(x) and not make_block("dnl", is_norm=True)._fusable(x)
    assert not make_block("snl", planes=16)._fusable(x)  # N = 42 < 4 C': the module path is faster there
