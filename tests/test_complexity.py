"""Parameters and FLOPs of the blocks and models (tools/complexity.py) stay what tests/complexity.json pins.

A change to a block or a backbone that alters its cost fails here; if it is intended, re-pin with
    python tools/complexity.py --write tests/complexity.json
and say in the change why the cost moved. Everything is counted on the meta device, so this takes seconds.
"""
import json
import os

import torch

from lib import build_nonlocal
from tools._measure import count
from tools.complexity import block_complexity, pinned_numbers

PINNED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "complexity.json")


def test_parameters_and_flops_are_the_pinned_ones():
    with open(PINNED) as f:
        pinned = json.load(f)
    current = json.loads(json.dumps(pinned_numbers()))  # tuples -> lists, as in the file
    for table in ("blocks", "models"):
        changed = {name: (pinned[table].get(name), value) for name, value in current[table].items()
                   if pinned[table].get(name) != value}
        missing = sorted(set(pinned[table]) - set(current[table]))
        assert not changed and not missing, f"{table}: (pinned, now) {changed}; no longer counted: {missing}"


def test_the_counter_sees_the_affinity_products():
    """SNL at C = 16, C' = 8, N = 32 x 32, counted by hand in multiply-adds (2 FLOPs each).
    Dense: t, p, g (3 C' C N), M = T P^T and A Z (N^2 C' each), W1 Z + W2 AZ (2 C C' N).
    Factorized (lib/stage.py, FusedReluDotStage): [Z; F] (3 C' C N), d (2 C' N), Z Fs^T (2 C'^2 N),
    V = W2 R (2 C C'^2), [W1 | V] [Z; Fs] (3 C C' N)."""
    c, k, n = 16, 8, 1024
    dense = 3 * k * c * n + 2 * n * n * k + 2 * c * k * n
    factorized = 3 * k * c * n + 2 * k * n + 2 * k * k * n + 2 * c * k * k + 3 * c * k * n
    counted = block_complexity(paths=("dense", "factorized"), shapes=("cifar1",))
    assert counted["snl-cifar1-dense"][1] == 2 * dense
    assert counted["snl-cifar1-factorized"][1] == 2 * factorized
    with torch.device("meta"):
        block = build_nonlocal("snl", c, k)
    assert count(block, (c, 32, 32))[0] == 5 * c * k + 2 * c  # five 1x1 convs and the BN's weight and bias


def test_chebyshev_order_k_costs_k_factorized_applications():
    """cheb at C = 16, C' = 8, N = 32 x 32 in multiply-adds: t, p, g (3 C' C N), the degrees (2 C' N), K
    applications of A each through the factors (Z F^T and (.) S^T F: 4 C'^2 N), and one product of
    [W_1 | ... | W_{K+1}] with [T_0 Z; ...; T_K Z] ((K + 1) C C' N): linear in K, never N^2."""
    c, k, n = 16, 8, 1024
    counted = block_complexity(paths=("auto",), shapes=("cifar1",))
    for order in (2, 3):
        name = "cheb-cifar1" if order == 2 else f"cheb{order}-cifar1"
        expected = 3 * k * c * n + 2 * k * n + order * 4 * k * k * n + (order + 1) * c * k * n
        assert counted[name][1] == 2 * expected, order


def test_reid_and_detection_rows_add_exactly_their_blocks():
    """The re-ID rows (256x128, last stride 1) and detection rows (the ResNet-FPN at 800x1344) differ from their
    plain models by the blocks' own cost at the places the builders put them: AGW's two layer2 blocks at
    512 x 32x16 and three layer3 blocks at 1024 x 16x8; the detector's layer3 block at 1024 x 50x84."""
    from tools.complexity import model_complexity

    def block_flops(c, h, w):
        with torch.device("meta"):
            return count(build_nonlocal("snl", c, c // 2), (c, h, w))[1]
    rows = model_complexity()
    assert rows["reid50-snl-n5"][1] - rows["reid50-plain"][1] == 2 * block_flops(512, 32, 16) + 3 * block_flops(
        1024, 16, 8)
    assert rows["maskrcnn50-snl-n1"][1] - rows["maskrcnn50-plain"][1] == block_flops(1024, 50, 84)
