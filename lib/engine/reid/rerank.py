"""k-reciprocal re-ranking (Zhong, Zheng, Cao, Li: "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), computed in bounded memory.

Over all N = Q + G probe and gallery features, with d the pairwise distance divided by its row's maximum:
  R(p, k)   = {g in N(p, k) : p in N(g, k)}                      k-reciprocal neighbours, N(., k) the
              k nearest including the item itself;
  R*(p, k1) = R(p, k1) united with R(q, k1/2) for each q in R(p, k1) sharing more than 2/3 of R(q, k1/2) with
              R(p, k1)                                            (the expansion);
  V_p[g]    = exp(-d(p, g)) / sum_{g' in R*} exp(-d(p, g')) on R*(p, k1), else 0 (Gaussian kernel);
  local query expansion: V_p <- mean of V_q over the k2 nearest q of p;
  d_J(p, g) = 1 - sum_j min(V_p[j], V_g[j]) / sum_j max(V_p[j], V_g[j])                   (Jaccard; with rows
              summing to 1, sum max = 2 - sum min);
  d*(p, g)  = (1 - lambda) d_J(p, g) + lambda d(p, g)                                      (final distance).
Defaults k1 20, k2 6, lambda 0.3 (the paper's Market-1501 setting).

Memory: the N x N distance matrix is never formed. Distances are computed in blocks of `block_size` rows to keep
each row's k1 + 1 nearest neighbours and its maximum; d(p, g) for the few pairs the
encoding needs comes from the features.
V is a sparse matrix with at most about k2 * |R*| entries per row. Peak memory is therefore the features (N x D),
the sparse V (Market-1501: N = 19,281; estimated under 10 M entries, about 100 MB), one block_size x N distance
block and the block_size x G output block: an estimated 0.5 GB at Market scale with 128-row blocks, instead of the
dense original's several N x N float matrices (about 1.5 GB each in float32).
"""
from typing import Iterator

import numpy as np
import scipy.sparse as sp
import torch

from lib.engine.reid.distances import pairwise_distances
from lib.errors import ConfigError


class KReciprocalReranker:
    """Re-ranked query-to-gallery distances for qf (Q, D), gf (G, D); blocks() yields them block_size rows at a
    time (the rows of d* for the queries, in order), distances() returns the whole (Q, G) matrix."""

    def __init__(self, qf: torch.Tensor, gf: torch.Tensor, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                 distance: str = "euclidean", normalize: bool = True, block_size: int = 128):
        if not (isinstance(k1, int) and isinstance(k2, int) and k1 >= 1 and k2 >= 1):
            raise ConfigError(f"re-ranking needs integers k1 >= 1 and k2 >= 1, got {k1!r}, {k2!r}")
        if not 0 <= lambda_value <= 1:
            raise ConfigError(f"re-ranking lambda must be in [0, 1], got {lambda_value}")
        self.features = torch.cat([qf, gf]).double() if qf.dtype == torch.float64 else torch.cat([qf, gf]).float()
        self.num_query = len(qf)
        self.k1, self.k2, self.lambda_value = k1, k2, lambda_value
        self.distance, self.normalize, self.block_size = distance, normalize, block_size
        num = len(self.features)
        if k1 + 1 > num:
            raise ConfigError(f"re-ranking with k1 = {k1} needs more than {k1} query + gallery items, got {num}")
        self._neighbours_and_scale()  # features may live on an accelerator: distances run there, the rest on CPU
        self._encode()

    def _rows(self, start: int, stop: int) -> torch.Tensor:
        return pairwise_distances(self.features[start:stop], self.features, self.distance, self.normalize)

    def _neighbours_and_scale(self) -> None:
        """Each item's k1 + 1 nearest items (itself first) and its maximal distance (the row normalizer)."""
        num, ranks, scale = len(self.features), [], []
        for start in range(0, num, self.block_size):
            rows = self._rows(start, start + self.block_size)
            scale.append(rows.max(1).values)
            # A stable full sort of the block, so ties resolve by index as a dense argsort would.
            ranks.append(torch.sort(rows, dim=1, stable=True).indices[:, :self.k1 + 1])
        self.scale = torch.cat(scale).clamp_min(torch.finfo(self.features.dtype).tiny).double().cpu().numpy()
        self.nearest = torch.cat(ranks).cpu().numpy()

    def _pair_distances(self, i: int, js: np.ndarray) -> np.ndarray:
        return pairwise_distances(self.features[i:i + 1], self.features[js], self.distance,
                                  self.normalize)[0].double().cpu().numpy() / self.scale[i]

    def _reciprocal(self, i: int, k: int) -> np.ndarray:
        forward = self.nearest[i, :k + 1]
        return forward[(self.nearest[forward, :k + 1] == i).any(1)]

    def _encode(self) -> None:
        num, half = len(self.features), int(np.around(self.k1 / 2))
        rows, cols, vals = [], [], []
        for i in range(num):
            members = self._reciprocal(i, self.k1)
            expansion = [members]
            for candidate in members:
                theirs = self._reciprocal(candidate, half)
                if len(np.intersect1d(theirs, members)) > 2 / 3 * len(theirs):
                    expansion.append(theirs)
            members = np.unique(np.concatenate(expansion))
            weights = np.exp(-self._pair_distances(i, members))
            rows.append(np.full(len(members), i)), cols.append(members), vals.append(weights / weights.sum())
        v = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(num, num))
        if self.k2 > 1:  # local query expansion: average V over each item's k2 nearest (itself included)
            expand = sp.csr_matrix((np.full(num * self.k2, 1.0 / self.k2),
                                    (np.repeat(np.arange(num), self.k2), self.nearest[:, :self.k2].reshape(-1))),
                                   shape=(num, num))
            v = expand @ v
        self.v = v.tocsr()
        self.v_columns = v.tocsc()

    def _jaccard_row(self, i: int) -> np.ndarray:
        """sum_j min(V_i[j], V_g[j]) for every item g, touching only the columns where V_i is non-zero."""
        row = self.v[i]
        starts, stops = self.v_columns.indptr[row.indices], self.v_columns.indptr[row.indices + 1]
        lengths = stops - starts
        positions = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        items = self.v_columns.indices[positions]
        mins = np.minimum(np.repeat(row.data, lengths), self.v_columns.data[positions])
        common = np.bincount(items, weights=mins, minlength=self.v.shape[0])
        return 1 - common / (2 - common)

    def blocks(self) -> Iterator[np.ndarray]:
        q = self.num_query
        for start in range(0, q, self.block_size):
            stop = min(start + self.block_size, q)
            original = self._rows(start, stop)[:, q:].double().cpu().numpy() / self.scale[start:stop, None]
            jaccard = np.stack([self._jaccard_row(i)[q:] for i in range(start, stop)])
            yield (1 - self.lambda_value) * jaccard + self.lambda_value * original

    def distances(self) -> np.ndarray:
        gallery = len(self.features) - self.num_query
        return np.concatenate(list(self.blocks())) if self.num_query else np.zeros((0, gallery))
