"""Re-ID protocol, re-ranking and losses against hand-made cases and slow direct implementations (float64)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lib.engine.reid import (
    CenterLoss,
    KReciprocalReranker,
    ReidCriterion,
    batch_hard_triplet,
    evaluate,
    evaluate_distances,
    label_smoothing_ce,
    pairwise_distances,
    weighted_regularized_triplet,
)
from lib.errors import ConfigError


def direct_protocol(dist, q_pids, g_pids, q_cams, g_cams, max_rank=20):
    """One query at a time, plain loops: the protocol as the Market-1501 evaluation describes it."""
    cmc_sum, aps, inps, skipped = np.zeros(max_rank), [], [], 0
    for i in range(len(dist)):
        order = sorted(range(len(g_pids)), key=lambda j: (dist[i][j], j))
        kept = [j for j in order if not (g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i])]
        matches = [g_pids[j] == q_pids[i] for j in kept]
        if not any(matches):
            skipped += 1
            continue
        first = matches.index(True)
        cmc_sum[first:] += 1
        hits, precisions = 0, []
        for position, match in enumerate(matches, start=1):
            if match:
                hits += 1
                precisions.append(hits / position)
                last = position
        aps.append(sum(precisions) / hits)
        inps.append(hits / last)
    valid = len(dist) - skipped
    return cmc_sum / valid, float(np.mean(aps)), float(np.mean(inps)), skipped


def test_hand_made_case():
    # Gallery (pid, camera): g0 (1, 0), g1 (2, 0), g2 (1, 1), g3 (0, 1) distractor, g4 (1, 2), g5 (3, 4), g6 (-1, 1)
    g_pids, g_cams = [1, 2, 1, 0, 1, 3, -1], [0, 0, 1, 1, 2, 4, 1]
    dist = np.array([
        # query A (pid 1, cam 0): order g6 g0 g1 g2 g3 g4 g5; g6 junk and g0 (same pid + camera) removed ->
        # kept g1 g2(hit, rank 2) g3 g4(hit, rank 4) g5: AP (1/2 + 2/4) / 2, INP 2/4
        [0.2, 0.3, 0.4, 0.5, 0.6, 0.9, 0.1],
        # query B (pid 3, cam 4): its only match g5 has its camera: skipped
        [0.5, 0.4, 0.3, 0.2, 0.1, 0.0, 0.9],
        # query C (pid 0, cam 5): order g5, g3 (hit, rank 2), ...: AP 1/2, INP 1/2
        [0.9, 0.9, 0.9, 0.1, 0.9, 0.0, 0.9],
    ])
    metrics = evaluate_distances(dist, [1, 3, 0], g_pids, [0, 4, 5], g_cams)
    assert metrics["num_skipped"] == 1 and metrics["num_queries"] == 2
    assert metrics["rank1"] == 0 and metrics["rank5"] == 1
    assert metrics["mAP"] == pytest.approx(((1 / 2 + 2 / 4) / 2 + 1 / 2) / 2)
    assert metrics["mINP"] == pytest.approx((2 / 4 + 1 / 2) / 2)
    # From camera 3 no match is excluded: hits g0, g2, g4 at ranks 1, 3, 5 (g6 junk still removed).
    alone = evaluate_distances(dist[:1], [1], g_pids, [3], g_cams)
    assert alone["rank1"] == 1 and alone["mAP"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)


def test_ties_resolve_by_gallery_order():
    # All distances equal: the stable order puts g0 (wrong id) first, g1 (match) second.
    metrics = evaluate_distances(np.zeros((1, 2)), [7], [8, 7], [0], [1, 1])
    assert metrics["rank1"] == 0 and metrics["mAP"] == 0.5


def test_no_valid_query_is_an_error():
    with pytest.raises(ConfigError, match="no query"):
        evaluate_distances(np.zeros((1, 2)), [7], [7, 8], [0], [0, 0])


@pytest.mark.parametrize("block_size", [1, 7, 1000])
def test_blockwise_matches_direct(block_size):
    rng = np.random.default_rng(0)
    qf, gf = torch.randn(23, 6, dtype=torch.float64), torch.randn(61, 6, dtype=torch.float64)
    q_pids, g_pids = rng.integers(0, 8, 23), rng.integers(0, 8, 61)
    q_cams, g_cams = rng.integers(0, 3, 23), rng.integers(0, 3, 61)
    metrics = evaluate(qf, gf, q_pids, g_pids, q_cams, g_cams, block_size=block_size)
    dist = torch.cdist(F.normalize(qf, dim=1), F.normalize(gf, dim=1)).numpy()
    cmc, ap, inp, skipped = direct_protocol(dist, q_pids, g_pids, q_cams, g_cams)
    assert metrics["num_skipped"] == skipped
    for k in (1, 5, 10, 20):
        assert metrics[f"rank{k}"] == pytest.approx(cmc[k - 1])
    assert metrics["mAP"] == pytest.approx(ap) and metrics["mINP"] == pytest.approx(inp)
    cosine = evaluate(qf, gf, q_pids, g_pids, q_cams, g_cams, distance="cosine", block_size=block_size)
    assert cosine["mAP"] == pytest.approx(ap)


def test_distances():
    q, g = torch.randn(3, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    expected = torch.cdist(q, g) ** 2
    assert torch.allclose(pairwise_distances(q, g, normalize=False), expected)
    expected = 1 - F.normalize(q, dim=1) @ F.normalize(g, dim=1).t()
    assert torch.allclose(pairwise_distances(q, g, "cosine"), expected)
    with pytest.raises(ConfigError, match="unknown distance"):
        pairwise_distances(q, g, "manhattan")


def dense_rerank(qf, gf, k1, k2, lam):
    """Zhong et al.'s algorithm with dense N x N matrices and per-item loops."""
    feats = F.normalize(torch.cat([qf, gf]), dim=1)
    dist = (torch.cdist(feats, feats) ** 2).numpy()
    dist = dist / dist.max(1, keepdims=True)
    num, q = len(dist), len(qf)
    rank = np.argsort(dist, axis=1, kind="stable")

    def reciprocal(i, k):
        forward = rank[i, :k + 1]
        return np.array([j for j in forward if i in rank[j, :k + 1]], dtype=int)

    v = np.zeros((num, num))
    for i in range(num):
        members = reciprocal(i, k1)
        expanded = list(members)
        for c in members:
            theirs = reciprocal(c, int(np.around(k1 / 2)))
            if len(set(theirs) & set(members)) > 2 / 3 * len(theirs):
                expanded += list(theirs)
        members = np.unique(np.array(expanded, dtype=int))
        w = np.exp(-dist[i, members])
        v[i, members] = w / w.sum()
    v = np.stack([v[rank[i, :k2]].mean(0) for i in range(num)])
    jaccard = np.zeros((q, num))
    for i in range(q):
        for j in range(num):
            common = np.minimum(v[i], v[j]).sum()
            jaccard[i, j] = 1 - common / np.maximum(v[i], v[j]).sum()
    return ((1 - lam) * jaccard + lam * dist[:q])[:, q:]


def test_rerank_matches_dense():
    torch.manual_seed(0)
    qf, gf = torch.randn(9, 5, dtype=torch.float64), torch.randn(31, 5, dtype=torch.float64)
    expected = dense_rerank(qf, gf, k1=6, k2=3, lam=0.3)
    for block in (1, 4, 64):
        got = KReciprocalReranker(qf, gf, k1=6, k2=3, lambda_value=0.3, block_size=block).distances()
        np.testing.assert_allclose(got, expected, atol=1e-10)
    pids = np.arange(40) % 6
    metrics = evaluate(qf, gf, pids[:9], pids[9:], np.zeros(9), np.ones(31), rerank=(6, 3, 0.3), block_size=4)
    assert metrics == evaluate_distances(expected, pids[:9], pids[9:], np.zeros(9), np.ones(31))


@pytest.mark.parametrize("case", ["ties", "ties, k2 = 1", "k1 above the gallery", "k2 above k1"])
def test_rerank_matches_dense_edge_cases(case, monkeypatch):
    import lib.engine.reid.rerank as rerank_module
    # Tiny chunks: the pair distances and the Jaccard sums then run in many pieces, as at Market scale.
    monkeypatch.setattr(rerank_module, "PAIR_CHUNK", 7)
    monkeypatch.setattr(rerank_module, "TRIPLE_CHUNK", 50)
    torch.manual_seed(1)
    if case.startswith("ties"):
        # Entries +-1/2 in 4 dimensions: unit vectors whose distances (multiples of 1/2) every implementation
        # computes exactly, so ties are real ties: each of the 16 vectors about 3 times, one vector 9 times (more
        # copies than k1 + 1 = 7: the neighbour cut falls inside a run of equal distances, lowest indices kept).
        signs = torch.tensor([[(v >> b) & 1 for b in range(4)] for v in range(16)], dtype=torch.float64) - 0.5
        items = torch.cat([torch.randint(0, 16, (40,)), torch.zeros(9, dtype=torch.long)])
        feats = signs[items[torch.randperm(len(items))]]
        qf, gf = feats[:10], feats[10:]
        k1, k2 = 6, 1 if case.endswith("1") else 3   # k2 = 1: "expansion" by a lower-index copy, not the item
    elif case == "k1 above the gallery":
        qf, gf, k1, k2 = torch.randn(20, 5, dtype=torch.float64), torch.randn(5, 5, dtype=torch.float64), 8, 4
    else:
        qf, gf, k1, k2 = torch.randn(6, 5, dtype=torch.float64), torch.randn(15, 5, dtype=torch.float64), 2, 5
    expected = dense_rerank(qf, gf, k1=k1, k2=k2, lam=0.3)
    for block in (1, 3, 64):
        got = KReciprocalReranker(qf, gf, k1=k1, k2=k2, lambda_value=0.3, block_size=block).distances()
        np.testing.assert_allclose(got, expected, atol=1e-10)


def test_rerank_float32_and_errors():
    torch.manual_seed(2)
    qf, gf = torch.randn(9, 5, dtype=torch.float64), torch.randn(31, 5, dtype=torch.float64)
    got = KReciprocalReranker(qf.float(), gf.float(), k1=6, k2=3, lambda_value=0.3).distances()
    np.testing.assert_allclose(got, dense_rerank(qf, gf, 6, 3, 0.3), atol=1e-5)
    # On unit features cosine = squared euclidean / 2: after the row scaling the same distances, the same result.
    cosine = KReciprocalReranker(qf, gf, k1=6, k2=3, lambda_value=0.3, distance="cosine", block_size=4).distances()
    np.testing.assert_allclose(cosine, dense_rerank(qf, gf, 6, 3, 0.3), atol=1e-10)
    with pytest.raises(ConfigError, match="needs more than"):
        KReciprocalReranker(qf[:2], gf[:3], k1=5)


def test_label_smoothing_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0]], dtype=torch.float64)
    logp = logits.log_softmax(1)[0]
    expected = -(0.9 + 0.1 / 3) * logp[0] - (0.1 / 3) * (logp[1] + logp[2])
    assert label_smoothing_ce(logits, torch.tensor([0])).item() == pytest.approx(expected.item())


def test_triplets_by_hand():
    # 1-D features: ids a = {0, 1}, b = {3, 7}. Distances: |0-1| 1, |3-7| 4; negatives: 0-3 3, 0-7 7, 1-3 2, 1-7 6.
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1])
    # hardest positive / negative per anchor: 0: (1, 3), 1: (1, 2), 3: (4, 2), 7: (4, 6)
    expected = (max(0, 1 - 3 + .3) + max(0, 1 - 2 + .3) + max(0, 4 - 2 + .3) + max(0, 4 - 6 + .3)) / 4
    assert batch_hard_triplet(x, y, 0.3).item() == pytest.approx(expected)
    e = np.exp

    def soft(values, sign):
        w = e(sign * np.array(values, float))
        return float((w / w.sum() * values).sum())
    # positives include the anchor itself (distance ~0: the 1e-6 floor of the sqrt)
    pos = [[1e-6, 1], [1e-6, 1], [1e-6, 4], [1e-6, 4]]
    neg = [[3, 7], [2, 6], [3, 2], [7, 6]]
    expected = np.mean([np.log1p(e(soft(p, 1) - soft(n, -1))) for p, n in zip(pos, neg)])
    assert weighted_regularized_triplet(x, y).item() == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ConfigError, match="two identities"):
        batch_hard_triplet(x, torch.zeros(4, dtype=torch.long))


def test_center_loss_and_criterion():
    x = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([1, 0])
    center = CenterLoss(2, 2, dtype=torch.float64)
    with torch.no_grad():
        center.centers.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    assert center(x, y).item() == pytest.approx((5 + 2) / 2)
    criterion = ReidCriterion(2, 2, triplet="hard", center_weight=0.5, dtype=torch.float64)
    with torch.no_grad():
        criterion.center.centers.copy_(center.centers)
    logits = torch.tensor([[0.5, 0.1], [0.3, 0.9]], dtype=torch.float64, requires_grad=True)
    total, parts = criterion(logits, x, y)
    expected = label_smoothing_ce(logits, y) + batch_hard_triplet(x, y, 0.3) + 0.5 * 3.5
    assert total.item() == pytest.approx(expected.item())
    assert set(parts) == {"ce", "triplet", "center"} and len(criterion.center_parameters()) == 1
    total.backward()
    assert logits.grad is not None
    with pytest.raises(ConfigError, match="unknown triplet"):
        ReidCriterion(2, 2, triplet="semi")
