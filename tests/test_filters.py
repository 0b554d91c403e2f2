"""The spectral filter family (cheb, gsnl, cayley, arma; docs/spectral.md), every stage-based block's
filter_response, blocks for 1, 2 and 3 spatial dims, and the blocks' clear errors."""
import math

import direct_formulas as direct
import pytest
import torch
from test_blocks import STAGE_KINDS, make_block, rel_err

from lib import ConfigError, build_nonlocal
from lib.affinity import DenseAffinity, dense_relu_dot
from lib.registry import NONLOCAL_BLOCKS, stage_based
from lib.snl import SNL

SPECTRAL = [("cheb", 1), ("cheb", 2), ("cheb", 3), ("gsnl", None), ("cayley", None), ("arma", 1), ("arma", 3)]
SPECTRAL_IDS = [kind if order is None else f"{kind}{order}" for kind, order in SPECTRAL]


def spectral_block(kind, order, **kwargs):
    return make_block(kind, order=order, **kwargs)


def zero_degree_input(shape=(3, 16, 6, 7)):
    """x with one position all 0: there theta = phi = 0, so relu(theta), relu(phi) are 0 and its degree is 0."""
    x = torch.randn(shape, dtype=torch.float64)
    x[:, :, 2, 3] = 0
    return x


def forward_backward(block, x, fn=None):
    """(y, dL/dx, [dL/dp for p in block.parameters()]) for L = sum(y^2)."""
    x = x.clone().requires_grad_()
    y = block(x) if fn is None else fn(block, x)
    y.square().sum().backward()
    return [y, x.grad] + [p.grad for p in block.parameters()]


# --- the new blocks against their equations ------------------------------------------------------------------


@pytest.mark.parametrize("kind,order", SPECTRAL, ids=SPECTRAL_IDS)
@pytest.mark.parametrize("affinity", ["default", "other"])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("stage_num", [1, 2])
def test_spectral_block_matches_the_direct_formula(kind, order, affinity, train, stage_num):
    """float64, outputs and gradients to 1e-10; "other": gsnl on the normalized affinity (its default is
    softmax), the others on the normalized non-symmetric one. The input has a zero-degree position."""
    options = {}
    if affinity == "other":
        options = dict(is_sys=True, is_norm=True) if kind == "gsnl" else dict(is_sys=False)
    block = spectral_block(kind, order, stage_num=stage_num, **options).double().train(train)
    reference = spectral_block(kind, order, stage_num=stage_num, **options).double().train(train)
    x = zero_degree_input()
    got = forward_backward(block, x)
    expected = forward_backward(reference, x, lambda module, xi: direct.stage_forward(module, xi, kind))
    for (name, _), a, b in zip([("y", None), ("x", None)] + list(block.named_parameters()), got, expected):
        assert rel_err(a, b) < 1e-10, name
    assert torch.isfinite(got[1]).all()
    if train:  # the running statistics move the same way
        for (name, b), b_ref in zip(block.named_buffers(), reference.buffers()):
            if not name.endswith("num_batches_tracked"):
                torch.testing.assert_close(b, b_ref, msg=name)


def test_default_affinities():
    for kind in ("cheb", "cayley", "arma"):
        assert (build_nonlocal(kind, 8, 4).is_sys, build_nonlocal(kind, 8, 4).is_norm) == (True, True)
    assert (build_nonlocal("gsnl", 8, 4).is_sys, build_nonlocal("gsnl", 8, 4).is_norm) == (False, False)
    assert build_nonlocal("cheb", 8, 4).stages[0].order == 2 and build_nonlocal("arma", 8, 4).stages[0].order == 2


def test_cayley_works_on_half_width_z():
    unit = build_nonlocal("cayley", 16, 8).stages[0]
    assert unit.g.weight.shape == (4, 16, 1, 1) and unit.w_h.weight.shape == (4, 4, 1, 1)
    assert unit.w_1.weight.shape == (16, 4, 1, 1) and unit.w_2.weight.shape == (16, 4, 1, 1)
    assert build_nonlocal("cayley", 16, 7).stages[0].g.out_channels == 3  # int(7 / 2)


def test_gsnl_has_no_output_relu():
    """Y - X = BN(pre) takes negative values for gsnl (relu(BN(pre)) would not)."""
    block = make_block("gsnl").eval()
    x = torch.randn(2, 16, 4, 4)
    assert (block(x) - x).min() < -1e-3
    assert (make_block("snl").eval()(x) - x).min() >= 0


@pytest.mark.parametrize("kind,order", SPECTRAL, ids=SPECTRAL_IDS)
@pytest.mark.parametrize("stage_num", [1, 2])
@pytest.mark.parametrize("is_sys", [True, False])
@pytest.mark.parametrize("train", [True, False])
def test_dense_and_factorized_paths_agree(kind, order, stage_num, is_sys, train):
    x = zero_degree_input()
    results = []
    for path in ("dense", "factorized"):
        block = spectral_block(kind, order, stage_num=stage_num, is_sys=is_sys, is_norm=True, affinity_path=path)
        results.append(forward_backward(block.double().train(train), x))
    for dense, factorized in zip(*results):
        assert (factorized - dense).norm() <= 1e-8 * dense.norm() + 1e-12


def test_each_new_block_applies_a_only_through_the_operator(monkeypatch):
    """No N x N tensor is formed on the factorized path: cheb order K applies A K times, cayley and arma order
    2 twice, per unit, and all through the affinity operator."""
    import lib.affinity as affinity
    calls = []
    original = affinity.ReluDotAffinity._apply
    monkeypatch.setattr(affinity.ReluDotAffinity, "_apply", lambda self, z: calls.append(z.shape) or original(self, z))
    monkeypatch.setattr(affinity, "dense_relu_dot", None)  # the dense path would fail
    x = torch.randn(2, 16, 6, 7)
    for kind, order, applications in [("cheb", 3, 3), ("cayley", None, 2), ("arma", 2, 2), ("gsnl", None, 1)]:
        calls.clear()
        block = build_nonlocal(kind, 16, 8, stage_num=2, order=order, is_norm=True, affinity_path="factorized")
        block(x).sum().backward()
        assert len(calls) == 2 * applications, kind
        assert all(n == 42 and c <= 8 for _, c, n in calls), calls


# --- cheb and SNL ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage_num", [1, 2])
@pytest.mark.parametrize("path", ["auto", "dense"])
def test_cheb_order_1_is_snl(stage_num, path):
    snl = make_block("snl", stage_num=stage_num, affinity_path=path).double()
    cheb = build_nonlocal("cheb", 16, 8, stage_num=stage_num, order=1, affinity_path=path).double()
    cheb.load_state_dict(snl.state_dict(), strict=True)  # an SNL state_dict loads unchanged
    assert cheb._fusable(torch.zeros(3, 16, 6, 7)) == snl._fusable(torch.zeros(3, 16, 6, 7))
    x = zero_degree_input()
    for a, b in zip(forward_backward(cheb, x), forward_backward(snl, x)):
        assert rel_err(a, b) < 1e-12
    lam = torch.linspace(0, 2, 7, dtype=torch.float64)
    torch.testing.assert_close(cheb.filter_response(lam), snl.filter_response(lam), rtol=0, atol=0)


@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_cheb_response_is_the_chebyshev_sum(order):
    """sum_k W_{k+1} T_k(1 - lam), with T_k(mu) = cos(k arccos mu) on [-1, 1] (not the recurrence)."""
    unit = build_nonlocal("cheb", 6, 4, order=order).double().stages[0]
    lam = torch.linspace(0, 2, 9, dtype=torch.float64)
    mu = 1 - lam
    expected = sum(torch.cos(k * torch.arccos(mu))[:, None, None] * getattr(unit, f"w_{k + 1}").weight.flatten(1)
                   for k in range(order + 1))
    torch.testing.assert_close(unit.filter_response(lam), expected, rtol=1e-12, atol=1e-12)


# --- filter_response of every stage-based block ---------------------------------------------------------------


def symmetric_normalized_affinity(n=12, seed=0):
    """A = D^(-1/2) M D^(-1/2) for a random symmetric M >= 0: L = I - A has eigenvalues in [0, 2]."""
    gen = torch.Generator().manual_seed(seed)
    factors = torch.rand(1, 3, n, generator=gen, dtype=torch.float64) - 0.3
    return dense_relu_dot(torch.relu(factors), torch.relu(factors.flip(1)), is_sys=True, normalize=True)


@pytest.mark.parametrize("kind,order", [(kind, None) for kind in STAGE_KINDS] + [("cheb", 3), ("arma", 3)])
def test_filter_response_is_what_the_unit_applies_on_each_eigenvector(kind, order):
    """With A = U diag(mu) U^T, the unit's linear part on Z = u_j v^T (position eigenvector u_j, channel vector
    v) is u_j (R(1 - mu_j) v)^T, R = filter_response: the filter acts on each frequency by that matrix.
    (DNL: its graph part W2 (A Z), without the unary term.)"""
    block = make_block(kind, c=6, planes=4, stage_num=2, order=order).double()
    att = symmetric_normalized_affinity()
    mu, vectors = torch.linalg.eigh(att[0])
    assert mu.min() >= -1 - 1e-12 and mu.max() <= 1 + 1e-12
    response = block.filter_response(1 - mu)  # (stage_num, N, C, Cz)
    cz = block.stages[0].g.out_channels
    assert response.shape == (2, 12, 6, cz)
    gen = torch.Generator().manual_seed(1)
    for unit, unit_response in zip(block.stages, response):
        v = torch.randn(cz, generator=gen, dtype=torch.float64)
        for j in range(12):
            z = (v[:, None] * vectors[:, j][None, :]).reshape(1, cz, 3, 4)  # (1, Cz, H, W), N = 12
            out = unit.graph_filter(DenseAffinity(att), z, linear=True).reshape(6, 12)
            expected = (unit_response[j] @ v)[:, None] * vectors[:, j][None, :]
            assert (out - expected).abs().max() < 1e-10 * max(1.0, expected.abs().max().item()), (kind, j)


def test_arma_linear_part_is_relu_free_and_tends_to_the_rational_filter():
    """The exact response is that of the T iterations run; as T grows (|mu| ||W_a|| < 1) it tends to
    W_o (I - mu W_a)^-1 V, the ARMA_1 filter of Bianchi et al."""
    block = build_nonlocal("arma", 6, 4, order=60).double()
    unit = block.stages[0]
    with torch.no_grad():
        unit.w_a.weight.mul_(0.5 / torch.linalg.matrix_norm(unit.w_a.weight.flatten(1), ord=2))
    lam = torch.linspace(0, 2, 5, dtype=torch.float64)
    w_a, v, w_o = (m.weight.flatten(1) for m in (unit.w_a, unit.v, unit.w_o))
    eye = torch.eye(4, dtype=torch.float64)
    rational = torch.stack([w_o @ torch.linalg.solve(eye - (1 - x) * w_a, v) for x in lam])
    torch.testing.assert_close(unit.filter_response(lam), rational, rtol=1e-10, atol=1e-10)


def test_blocks_without_a_graph_filter_have_no_response():
    assert [kind for kind in NONLOCAL_BLOCKS if not stage_based(kind)] == ["cgnl", "cc"]
    for kind in ("cgnl", "cc"):
        assert not hasattr(build_nonlocal(kind, 16, 8), "filter_response")


def test_hand_computed_responses():
    """C = C' = 1 with all weights 1 (W_h = 1): the scalar responses written out at lam = 0, 1, 2."""
    lam = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    expected = {"snl": [2, 1, 0], "nl": [1, 0, -1], "ns": [0, 1, 2], "dnl": [1, 0, -1],
                "cheb": [3, 0, 1],  # T_0 + T_1 + T_2 at mu = 1, 0, -1: 1 + 1 + 1, 1 + 0 - 1, 1 - 1 + 1
                "gsnl": [3, 0, -3],  # 1 + mu + (2 mu - 1) = 3 mu
                "cayley": [2, 3, 6],  # 1 + (1 + lam^2)
                "arma": [3, 1, 1]}  # T = 2: mu^2 + mu + 1
    for kind, values in expected.items():
        block = build_nonlocal(kind, 1, 2 if kind == "cayley" else 1).double()
        with torch.no_grad():
            for name, p in block.named_parameters():
                if "bn" not in name:
                    p.fill_(1.0)
        got = block.filter_response(lam).flatten()
        torch.testing.assert_close(got, torch.tensor(values, dtype=torch.float64), msg=kind)


# --- any number of spatial dims -------------------------------------------------------------------------------


def reshape_state(state, target):
    return {k: v.reshape(target[k].shape) for k, v in state.items()}


@pytest.mark.parametrize("kind", STAGE_KINDS)
@pytest.mark.parametrize("stage_num", [1, 2])
@pytest.mark.parametrize("train", [True, False])
def test_dim_1_and_3_give_the_numbers_of_dim_2(kind, stage_num, train):
    """The same 42 positions as (6, 7), (42,) and (2, 3, 7); the same weights with the singleton dims."""
    block2 = make_block(kind, stage_num=stage_num).double().train(train)
    x = zero_degree_input()
    ref = forward_backward(block2, x)
    for dim, shape in ((1, (3, 16, 42)), (3, (3, 16, 2, 3, 7))):
        block = build_nonlocal(kind, 16, 8, stage_num=stage_num, dim=dim).double().train(train)
        block.load_state_dict(reshape_state(block2.state_dict(), block.state_dict()), strict=True)
        bn_class = {1: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm3d}[dim]
        assert all(type(unit.bn) is bn_class for unit in block.stages)
        assert block.t.weight.shape == (8, 16) + (1,) * dim
        assert block._fusable(x.reshape(shape)) == block2._fusable(x)
        got = forward_backward(block, x.reshape(shape))
        assert got[0].shape == shape
        for a, b in zip(got, ref):
            assert rel_err(a.reshape(b.shape), b) < 1e-12


@pytest.mark.parametrize("kind", ["cheb", "arma", "gsnl"])
def test_dim_3_matches_the_direct_formula(kind):
    block = make_block(kind, stage_num=2, dim=3).double()
    x = torch.randn(2, 16, 2, 3, 4, dtype=torch.float64)
    got = forward_backward(block, x)
    expected = forward_backward(block, x, lambda module, xi: direct.stage_forward(module, xi, kind))
    assert rel_err(got[0], expected[0]) < 1e-10 and rel_err(got[1], expected[1]) < 1e-10


# --- clear errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", STAGE_KINDS)
def test_wrong_input_is_one_clear_error(kind):
    block = build_nonlocal(kind, 16, 8)
    with pytest.raises(ConfigError, match="built for 16 input channels, got 32"):
        block(torch.randn(2, 32, 4, 4))
    with pytest.raises(ConfigError, match=r"dim=2 expects a 4-D input \(B, C, H, W\), got shape \(2, 16, 5\)"):
        block(torch.randn(2, 16, 5))
    with pytest.raises(ConfigError, match=r"dim=1 expects a 3-D input \(B, C, L\)"):
        build_nonlocal(kind, 16, 8, dim=1)(torch.randn(2, 16, 4, 4))


@pytest.mark.parametrize("kind", list(NONLOCAL_BLOCKS))
@pytest.mark.parametrize("kwargs,message", [
    (dict(planes=0), "planes .* must be a positive integer, got 0"),
    (dict(planes=2.5), "planes .* must be a positive integer, got 2.5"),
    (dict(inplanes=0), "inplanes .* must be a positive integer, got 0"),
    (dict(stage_num=0), "stage_num must be a positive integer"),
    (dict(is_sys="False"), "is_sys must be True, False or None .* got 'False'"),
    (dict(is_norm="True"), "is_norm must be True, False or None"),
    (dict(is_sys=1), "is_sys must be True, False or None"),
    (dict(dim=4), "dim must be 1, 2 or 3"),
    (dict(zero_init="no"), "zero_init must be True or False"),
])
def test_bad_constructor_arguments_are_one_clear_error(kind, kwargs, message):
    args = dict(inplanes=16, planes=8)
    args.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        build_nonlocal(kind, **args)


def test_the_stage_classes_check_their_arguments_too():
    with pytest.raises(ConfigError, match="planes"):
        SNL(16, 0)
    with pytest.raises(ConfigError, match="is_sys"):
        SNL(16, 8, is_sys="False")
    with pytest.raises(ConfigError, match="order"):
        NONLOCAL_BLOCKS["cheb"](16, 8, order=0)
    with pytest.raises(ConfigError, match="cayley .* planes must be at least 2"):
        build_nonlocal("cayley", 16, 1)


def test_cc_is_2d_only():
    with pytest.raises(ConfigError, match=r"cc block works on images only \(dim 2\), got dim=3"):
        build_nonlocal("cc", 16, 8, dim=3)


def test_order_only_where_it_applies():
    assert build_nonlocal("cheb", 16, 8, order=4).stages[0].order == 4
    assert build_nonlocal("arma", 16, 8, order=1).stages[0].order == 1
    for kind in ("snl", "gsnl", "cayley", "cgnl", "cc"):
        with pytest.raises(ConfigError, match="order applies to cheb and arma only"):
            build_nonlocal(kind, 16, 8, order=3)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="order"):
            build_nonlocal("cheb", 16, 8, order=bad)


def test_cheb_state_dict_names_follow_the_order():
    keys = set(build_nonlocal("cheb", 16, 8, order=3).state_dict())
    assert {f"stages.0.w_{k}.weight" for k in range(1, 5)} <= keys and "stages.0.w_5.weight" not in keys
    assert math.prod(build_nonlocal("cheb", 16, 8, order=3).stages[0].w_4.weight.shape) == 16 * 8


# --- training with the new blocks -----------------------------------------------------------------------------


def test_training_with_cheb_order_3_stores_the_order(tmp_path, capsys):
    """train_val.py --dataset fake --nl-type cheb --order 3 --epochs 1: the checkpoint's model_args rebuild cheb
    order 3 (so --valid and --resume rebuild the same block), and --order for a block without one is refused."""
    import train_val
    from models import build_model, load_state_dict_checked

    common = ["--dataset", "fake", "--input-size", "8", "-b", "64", "-j", "0", "--warmup-epochs", "0",
              "--output-dir", str(tmp_path)]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train_val.cli_main(common + ["--nl-type", "cheb", "--order", "3", "--epochs", "1",
                                            "--checkpoints", "cheb3"]) == 0
    finally:
        torch.set_num_threads(previous)
    run_dir = tmp_path / "fake" / "20" / "cheb3"
    assert "order: 3" in (run_dir / "args.yaml").read_text().splitlines()
    (path,) = [p for p in run_dir.glob("*.pth.tar") if p.name != "model_best.pth.tar"]
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["model_args"]["nl_type"] == "cheb" and checkpoint["model_args"]["order"] == 3
    model = build_model(**checkpoint["model_args"])
    load_state_dict_checked(model, checkpoint["state_dict"])
    block = model.get_submodule(model.nonlocal_paths[0])
    assert block.stages[0].order == 3 and "stages.0.w_4.weight" in block.state_dict()
    capsys.readouterr()
    assert train_val.cli_main(common + ["--nl-type", "snl", "--order", "3", "--checkpoints", "bad"]) == 2
    assert "order applies to cheb and arma only" in capsys.readouterr().err
