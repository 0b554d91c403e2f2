"""The standard re-ID retrieval protocol (Market-1501: Zheng et al., ICCV 2015; mINP: Ye et al., TPAMI 2021).

For each query the gallery is sorted by distance (ascending; ties keep gallery order: a stable sort), the gallery
entries with the query's pid AND the query's camera are removed (the same person seen by the same camera is not a
re-identification), as are gallery entries with pid -1 (Market-1501's junk convention; the readers of lib/data
drop them already, this guards other callers), and the remaining list is scored:
    CMC(k) = 1 if a true match is among the first k kept entries, else 0;
    AP     = (1 / |P|) sum_{j in P} (j-th true match's position among the true matches) / (its rank),
    INP    = |P| / rank of the last (hardest) true match                                   (Ye et al.'s INP)  ,
with P the kept true matches. A query without any kept true match is skipped and counted in `num_skipped`. The
metrics are means over the scored queries. Queries are processed in blocks of `block_size`: memory is
O(block_size x num_gallery) whatever the number of queries (Market-1501, 3,368 x 15,913 with the default
128-query blocks: about 130 MB, measured with tracemalloc), and a caller may feed the blocks of distances itself
(evaluate_distances accepts any iterable of them).
"""
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
import torch

from lib.engine.reid.distances import pairwise_distances
from lib.engine.reid.rerank import KReciprocalReranker
from lib.errors import ConfigError

RANKS = (1, 5, 10, 20)
METRIC_NAMES = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")
DEFAULT_BLOCK = 128
JUNK_PID = -1


def _as_array(values) -> np.ndarray:
    return np.asarray(values.cpu() if torch.is_tensor(values) else values).reshape(-1)


def _score_block(dist: np.ndarray, q_pids, q_camids, g_pids, g_camids):
    """Per-query (first-hit rank, AP, INP, valid) of one block of distances, vectorized over the block."""
    order = np.argsort(dist, axis=1, kind="stable")
    pids, cams = g_pids[order], g_camids[order]
    same = pids == q_pids[:, None]
    keep = ~(same & (cams == q_camids[:, None])) & (pids != JUNK_PID)
    hit = same & keep
    rank = np.cumsum(keep, axis=1)                 # 1-based rank of each entry among the kept ones
    num_pos = hit.sum(1)
    valid = num_pos > 0
    hits_so_far = np.cumsum(hit, axis=1)
    precision_sum = np.where(hit, hits_so_far / np.maximum(rank, 1), 0.0).sum(1)
    ap = precision_sum / np.maximum(num_pos, 1)
    big = np.iinfo(np.int64).max
    first = np.where(hit, rank, big).min(1)
    last = np.where(hit, rank, 0).max(1)
    inp = num_pos / np.maximum(last, 1)
    return first, ap, inp, valid


def evaluate_distances(blocks: Iterable, q_pids, g_pids, q_camids, g_camids,
                       ranks: Sequence[int] = RANKS) -> Dict[str, float]:
    """Metrics from distances: `blocks` is a (Q, G) matrix (array or tensor) or an iterable of consecutive row
    blocks of it. Returns rank{k} for k in ranks (fractions in [0, 1]), mAP, mINP, num_queries (scored) and
    num_skipped (no true match left after the same-camera removal). All queries skipped: ConfigError."""
    q_pids, g_pids, q_camids, g_camids = map(_as_array, (q_pids, g_pids, q_camids, g_camids))
    if len(q_pids) != len(q_camids) or len(g_pids) != len(g_camids):
        raise ValueError(f"pids and camera ids differ in length: queries {len(q_pids)} vs {len(q_camids)}, "
                         f"gallery {len(g_pids)} vs {len(g_camids)}")
    if isinstance(blocks, (np.ndarray, torch.Tensor)):
        blocks = [blocks]
    firsts, aps, inps, valids = [], [], [], []
    start = 0
    for block in blocks:
        block = np.asarray(block.detach().cpu() if torch.is_tensor(block) else block)
        if block.ndim != 2 or block.shape[1] != len(g_pids):
            raise ValueError(f"distance block of shape {block.shape} does not match {len(g_pids)} gallery items")
        stop = start + len(block)
        first, ap, inp, valid = _score_block(block, q_pids[start:stop], q_camids[start:stop], g_pids, g_camids)
        firsts.append(first), aps.append(ap), inps.append(inp), valids.append(valid)
        start = stop
    if start != len(q_pids):
        raise ValueError(f"distance blocks cover {start} queries, expected {len(q_pids)}")
    valid = np.concatenate(valids) if valids else np.zeros(0, bool)
    if not valid.any():
        raise ConfigError("no query has a true match in the gallery (after removing same-camera matches): "
                          "nothing to evaluate")
    first = np.concatenate(firsts)[valid]
    metrics = {f"rank{k}": float((first <= k).mean()) for k in ranks}
    metrics["mAP"] = float(np.concatenate(aps)[valid].mean())
    metrics["mINP"] = float(np.concatenate(inps)[valid].mean())
    metrics["num_queries"] = int(valid.sum())
    metrics["num_skipped"] = int((~valid).sum())
    return metrics


def distance_blocks(qf: torch.Tensor, gf: torch.Tensor, distance: str = "euclidean", normalize: bool = True,
                    block_size: int = DEFAULT_BLOCK) -> Iterable[torch.Tensor]:
    """Consecutive row blocks of pairwise_distances(qf, gf), block_size queries each."""
    if block_size < 1:
        raise ConfigError(f"block_size must be positive, got {block_size}")
    for start in range(0, len(qf), block_size):
        yield pairwise_distances(qf[start:start + block_size], gf, distance, normalize)


def evaluate(qf: torch.Tensor, gf: torch.Tensor, q_pids, g_pids, q_camids, g_camids, distance: str = "euclidean",
             normalize: bool = True, rerank: Optional[Tuple[int, int, float]] = None,
             block_size: int = DEFAULT_BLOCK, ranks: Sequence[int] = RANKS) -> Dict[str, float]:
    """The protocol on features: qf (Q, D), gf (G, D) with their pids and camera ids (tensors or arrays).

    rerank: None, or (k1, k2, lambda) for k-reciprocal re-ranking (lib.engine.reid.rerank; (20, 6, 0.3) is Zhong
    et al.'s setting), which replaces the distances. Returns the dict of evaluate_distances (keys METRIC_NAMES plus
    num_queries and num_skipped).
    """
    if qf.ndim != 2 or gf.ndim != 2 or qf.shape[1] != gf.shape[1]:
        raise ValueError(f"features must be (Q, D) and (G, D), got {tuple(qf.shape)} and {tuple(gf.shape)}")
    if rerank is not None:
        k1, k2, lam = rerank
        reranker = KReciprocalReranker(qf, gf, k1=k1, k2=k2, lambda_value=lam, distance=distance,
                                       normalize=normalize, block_size=block_size)
        blocks = reranker.blocks()
    else:
        blocks = distance_blocks(qf, gf, distance, normalize, block_size)
    return evaluate_distances(blocks, q_pids, g_pids, q_camids, g_camids, ranks)
