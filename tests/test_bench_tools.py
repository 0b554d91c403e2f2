"""Smoke tests of the re-ID and detection benchmarks (tools/bench_reid.py, tools/bench_detection.py) at tiny sizes
(their numbers are not checked: they are measurements), and of the per-block N x N check they report."""
import pytest
import torch
from test_resume import one_thread  # noqa: F401  (autouse fixture: one CPU thread)

from lib.registry import build_nonlocal
from tools import bench_detection, bench_reid
from tools._measure import block_affinity_check


def affinity_check(nl_type, side, channels=16, **block_kwargs):
    """block_affinity_check of one block (C = channels, C' = C / 2) on a (2, C, side, side) input, through a
    forward and backward pass."""
    torch.manual_seed(0)
    block = build_nonlocal(nl_type, channels, channels // 2, **block_kwargs)
    x = torch.randn(2, channels, side, side, requires_grad=True)
    return block_affinity_check(block, [("block", block)], lambda: block(x).sum().backward())["block"]


@pytest.mark.parametrize("nl_type, side, kwargs, formed", [
    ("snl", 8, {}, False),  # N = 64 >= C' = 8: the factorized path, no N x N
    ("snl", 2, {}, True),  # N = 4 < C': the dense A is the cheaper one, and formed
    ("nl", 8, {"affinity_path": "dense"}, True),  # the softmax affinity formed explicitly
])
def test_block_affinity_check(nl_type, side, kwargs, formed):
    n, largest, dense, probed = affinity_check(nl_type, side, **kwargs)
    assert probed == n
    assert n == side * side and dense == formed
    assert torch.Size(largest).numel() >= 2 * 16 * n  # the block's input-sized tensors are recorded


def test_a_channel_count_equal_to_n_is_probed():
    # C = 16 = N (4 x 4): the (B, C, N) views have two dimensions of N; the probe (5 x 4 = 20) finds no affinity
    n, _, dense, probed = affinity_check("snl", 4, channels=16)
    assert (n, probed, dense) == (16, 20, False)
    n, _, dense, probed = affinity_check("nl", 4, channels=16, affinity_path="dense")
    assert (n, probed, dense) == (16, 20, True)


def test_bench_reid_prints_its_tables(capsys):
    # ResNet-18 at 64 x 32: layer3 has N = 4 x 2 = 8 positions, fewer than C' = 128, so SNL forms A (the cheaper
    # path there) and the table says so
    status = bench_reid.main(["--arch", "18", "--nl-nums", "1", "--blocks", "snl", "--batch", "8", "--size", "64",
                              "32", "--rounds", "1", "--threads", "1", "--eval-scale", "0.01", "--rerank-scale",
                              "0.01", "--dim", "16"])
    out = capsys.readouterr().out
    assert status == 0
    assert "| model | s / step (median) |" in out and "| plain |" in out
    row = next(line for line in out.splitlines() if line.startswith("| snl x 1 |"))
    assert row.endswith("| yes |")
    assert "snl trunk.layer3.1: N = 8" in out
    assert "| distance + ranking + mAP (blockwise) | 34 x 159 |" in out
    assert "| k-reciprocal re-ranking (20, 6, 0.3) + ranking + mAP | 34 x 159 |" in out
    assert "extrapolated (not measured)" in out


def test_bench_detection_prints_its_table(capsys):
    status = bench_detection.main(["--arch", "18", "--size", "64", "--objects", "1", "--blocks", "snl",
                                   "--rounds", "1", "--threads", "1", "--no-memory"])
    out = capsys.readouterr().out
    assert status == 0
    row = next(line for line in out.splitlines() if line.startswith("| snl x 1 |"))
    assert "| nan |" in row  # --no-memory
    assert "snl layer3.1: N = 16" in out  # 64 x 64 at stride 16
