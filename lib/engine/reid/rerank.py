"""k-reciprocal re-ranking (Zhong, Zheng, Cao, Li: "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), computed in bounded memory.

Over all N = Q + G probe and gallery features, with d the pairwise distance divided by its row's maximum:
  R(p, k)   = {g in N(p, k) : p in N(g, k)}                      k-reciprocal neighbours, N(., k) the
              k nearest including the item itself;
  R*(p, k1) = R(p, k1) united with R(q, k1/2) for each q in R(p, k1) sharing more than 2/3 of R(q, k1/2) with
              R(p, k1)                                            (the expansion);
  V_p[g]    = exp(-d(p, g)) / sum_{g' in R*} exp(-d(p, g')) on R*(p, k1), else 0 (Gaussian kernel);
  local query expansion: V_p <- mean of V_q over the k2 nearest q of p;
  d_J(p, g) = 1 - sum_j min(V_p[j], V_g[j]) / sum_j max(V_p[j], V_g[j])                   (Jaccard; sum max =
              |V_p|_1 + |V_g|_1 - sum min, = 2 - sum min unless a row is empty: R(p, k1) can be, for items with
              more than k1 exact duplicates of lower index; d_J = 1 where both rows are);
  d*(p, g)  = (1 - lambda) d_J(p, g) + lambda d(p, g)                                      (final distance).
Defaults k1 20, k2 6, lambda 0.3 (the paper's Market-1501 setting). Ties in distance resolve by item index (as a
stable argsort of the dense matrix would).

How, with no per-item Python loop:
  1. one pass over row blocks of the distance (block_size x N, in the features' dtype: float32 for float32
     features) keeps each row's maximum and its nearest items (torch.topk; rows where the cut falls inside a run of
     equal distances are re-sorted stably so ties keep index order);
  2. R(., k1) and R(., k1/2) for all items at once from the neighbour table (gathers and comparisons over
     N x (k+1) x (k+1) index arrays, in row chunks), as sparse 0/1 matrices M1, Mh;
  3. the expansion test |R(p, k1) & R(q, k1/2)| for every pair q in R(p, k1) is the sparse product M1 Mh^T read at
     M1's entries; R* = M1 + S Mh with S the accepted pairs;
  4. d(p, g) on R*'s entries from the features in chunks of pairs, V's rows normalized by np.bincount; local query
     expansion is one more sparse product;
  5. the Jaccard numerator sum_j min(V_p[j], V_g[j]) is not a (+, x) product, so it is computed per query block by
     walking V's gallery columns under each query's non-zeros and summing the minima with np.bincount (the
     sparse product's structure with min in place of x), in sub-blocks of bounded size.

Memory: no N x N matrix. Peak is the features (N x D, normalized once), two reused block_size x N buffers (products
and distances), the sparse structures (N x (k1 + 1) neighbour tables, V with about k2 * |R*| entries per row) and
one block_size x G output block. Measured at Market-1501 scale (N = 19,281, D = 2048, random features; V then holds
2.0 M entries): numpy / scipy peak 172 MiB, process peak 342 MiB above its start (the normalized features are
151 MiB of it); docs/performance.md ("Re-identification").
"""
from typing import Iterator, Optional

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from lib.engine.reid.distances import DISTANCES
from lib.errors import ConfigError

PAIR_CHUNK = 2048          # pairs whose distance is computed at once in step 4 (2048 x D gathers: 16 MB at D 2048)
TRIPLE_CHUNK = 4_000_000   # (query, column, gallery item) triples summed at once in step 5


def _indicator(lists: np.ndarray, keep: np.ndarray, num: int) -> sp.csr_matrix:
    """N x N 0/1 CSR matrix with row i's ones at lists[i][keep[i]]."""
    rows = np.repeat(np.arange(len(lists)), keep.sum(1))
    return sp.csr_matrix((np.ones(len(rows)), (rows, lists[keep])), shape=(num, num))


class KReciprocalReranker:
    """Re-ranked query-to-gallery distances for qf (Q, D), gf (G, D); blocks() yields them block_size rows at a
    time (the rows of d* for the queries, in order), distances() returns the whole (Q, G) matrix."""

    def __init__(self, qf: torch.Tensor, gf: torch.Tensor, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                 distance: str = "euclidean", normalize: bool = True, block_size: int = 128):
        if not (isinstance(k1, int) and isinstance(k2, int) and k1 >= 1 and k2 >= 1):
            raise ConfigError(f"re-ranking needs integers k1 >= 1 and k2 >= 1, got {k1!r}, {k2!r}")
        if not 0 <= lambda_value <= 1:
            raise ConfigError(f"re-ranking lambda must be in [0, 1], got {lambda_value}")
        if distance not in DISTANCES:
            raise ConfigError(f"unknown distance {distance!r}; choose one of {', '.join(DISTANCES)}")
        if block_size < 1:
            raise ConfigError(f"block_size must be positive, got {block_size}")
        features = torch.cat([qf, gf])
        features = features.double() if features.dtype == torch.float64 else features.float()
        # Normalized once here rather than per block (pairwise_distances would renormalize all N rows per block).
        self.features = F.normalize(features, dim=1) if normalize or distance == "cosine" else features
        del features  # the un-normalized N x D copy: not needed past here
        self.squares = (self.features * self.features).sum(1)
        self.num_query = len(qf)
        self.k1, self.k2, self.lambda_value = k1, k2, lambda_value
        self.distance, self.block_size = distance, block_size
        num = len(self.features)
        if k1 + 1 > num:
            raise ConfigError(f"re-ranking with k1 = {k1} needs more than {k1} query + gallery items, got {num}")
        # k2 may exceed k1 + 1 (and N: then the expansion averages over all items, as a dense [:k2] slice would).
        self.width = min(num, max(k1 + 1, k2))
        self._neighbours_and_scale()  # features may live on an accelerator: distances run there, the rest on CPU
        self._encode()

    def _distances(self, rows: slice, cols: slice, products: Optional[torch.Tensor] = None,
                   out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """d (unscaled) between items[rows] and items[cols]: pairwise_distances' formula on the pre-normalized
        features, with their squared norms computed once; products / out: optional buffers of the result's shape
        for a @ b^T and d (see _neighbours_and_scale)."""
        a, b = self.features[rows], self.features[cols]
        products = torch.matmul(a, b.t(), out=products)
        if self.distance == "cosine":
            return products.neg_().add_(1)   # 1 - a.b (in place: products is this call's own)
        squares = torch.add(self.squares[rows][:, None], self.squares[cols][None], out=out)
        return squares.sub_(products, alpha=2).clamp_min_(0)   # (|a|^2 + |b|^2) - 2 a.b, as pairwise_distances

    def _pair_distances(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """d(i[n], j[n]) / scale[i[n]] for pairs of item indices, PAIR_CHUNK pairs at a time."""
        out = np.empty(len(i))
        device = self.features.device
        for start in range(0, len(i), PAIR_CHUNK):
            a = torch.as_tensor(i[start:start + PAIR_CHUNK], device=device)
            b = torch.as_tensor(j[start:start + PAIR_CHUNK], device=device)
            dots = (self.features[a] * self.features[b]).sum(1)
            if self.distance == "cosine":
                d = 1 - dots
            else:
                d = ((self.squares[a] + self.squares[b]) - 2 * dots).clamp_min_(0)
            out[start:start + PAIR_CHUNK] = d.double().cpu().numpy()
        return out / self.scale[i]

    def _neighbours_and_scale(self) -> None:
        """Each item's `width` nearest items (ties by index, so usually itself first) and its maximal distance.

        Every block's results go into arrays allocated once, and the block's distances, products and masks into
        reused buffers: allocating ~10 MB blocks afresh 150 times while keeping each block's small results (the
        first version) fragmented glibc's heap (its mmap threshold adapts upward) and left 1.7 GB resident at
        Market scale for a few MB of live data."""
        num, width, block = len(self.features), self.width, min(self.block_size, len(self.features))
        device, dtype = self.features.device, self.features.dtype
        products = torch.empty(block, num, dtype=dtype, device=device)
        rows_buffer = torch.empty(block, num, dtype=dtype, device=device)
        below = torch.empty(block, num, dtype=torch.bool, device=device)
        values_buffer = torch.empty(block, width, dtype=dtype, device=device)
        index_buffer = torch.empty(block, width, dtype=torch.long, device=device)
        nearest = torch.empty(num, width, dtype=torch.long, device=device)
        scale = torch.empty(num, dtype=dtype, device=device)
        for start in range(0, num, block):
            stop = min(start + block, num)
            rows = self._distances(slice(start, stop), slice(None), products[:stop - start], rows_buffer[:stop - start])
            scale[start:stop] = rows.max(1).values
            values, index = values_buffer[:stop - start], index_buffer[:stop - start]
            torch.topk(rows, width, dim=1, largest=False, sorted=True, out=(values, index))
            # topk's order among equal values is unspecified: order the selection by (value, index).
            index, order = index.sort(1)
            values = values.gather(1, order)
            index = index.gather(1, torch.sort(values, dim=1, stable=True).indices)
            # Where more items tie with the last kept value than were kept, topk may have kept the wrong ones:
            # those rows (rare; exact duplicates) get a stable full sort.
            mask = torch.le(rows, values.max(1).values[:, None], out=below[:stop - start])
            ambiguous = (mask.sum(1) > width).nonzero().flatten()
            if len(ambiguous):
                index[ambiguous] = torch.sort(rows[ambiguous], dim=1, stable=True).indices[:, :width]
            nearest[start:stop] = index
        self.scale = scale.clamp_min(torch.finfo(dtype).tiny).double().cpu().numpy()
        self.nearest = nearest.cpu().numpy()

    def _reciprocal(self, k: int) -> sp.csr_matrix:
        """R(., k) of every item as an N x N 0/1 matrix: j in i's k + 1 nearest and i in j's."""
        num, chunk = len(self.nearest), 4096
        forward = self.nearest[:, :k + 1]
        keep = np.empty(forward.shape, bool)
        for start in range(0, num, chunk):
            ahead = forward[start:start + chunk]
            back = forward[ahead]                                  # (chunk, k + 1, k + 1): their k + 1 nearest
            keep[start:start + chunk] = (back == np.arange(start, start + len(ahead))[:, None, None]).any(2)
        return _indicator(forward, keep, num)

    def _encode(self) -> None:
        num, half = len(self.features), int(np.around(self.k1 / 2))
        m1, mh = self._reciprocal(self.k1), self._reciprocal(half)
        # |R(p, k1) & R(q, k1/2)| for each q in R(p, k1): (M1 Mh^T)[p, q], read at M1's entries.
        shared = m1.multiply(m1 @ mh.T).tocoo()
        sizes = np.diff(mh.indptr)
        accepted = shared.data > 2 / 3 * sizes[shared.col]
        s = sp.csr_matrix((np.ones(accepted.sum()), (shared.row[accepted], shared.col[accepted])), shape=(num, num))
        members = (m1 + s @ mh).tocsr()
        members.sum_duplicates()
        members.sort_indices()
        rows = np.repeat(np.arange(num), np.diff(members.indptr))
        weights = np.exp(-self._pair_distances(rows, members.indices))
        weights /= np.bincount(rows, weights=weights, minlength=num)[rows]
        v = sp.csr_matrix((weights, members.indices, members.indptr), shape=(num, num))
        # Local query expansion: average V over each item's k2 nearest (itself included). With k2 = 1 it is the
        # identity unless exact duplicates put a lower-index copy first in an item's list.
        if self.k2 > 1 or (self.nearest[:, 0] != np.arange(num)).any():
            k2 = min(self.k2, num)
            expand = sp.csr_matrix((np.full(num * k2, 1.0 / k2),
                                    (np.repeat(np.arange(num), k2), self.nearest[:, :k2].reshape(-1))),
                                   shape=(num, num))
            v = expand @ v
        self.v = v.tocsr()
        self.v_sums = np.asarray(self.v.sum(1)).ravel()
        # Only gallery items are ever compared with a query: their V, column by column, for step 5.
        self.gallery_columns = self.v[self.num_query:].tocsc()
        self.gallery_columns.sort_indices()

    def _jaccard_block(self, start: int, stop: int) -> np.ndarray:
        """d_J(p, g) for queries p in [start, stop) and every gallery item g: sum_j min(V_p[j], V_g[j]) gathered
        over the columns j where V_p is non-zero, TRIPLE_CHUNK (p, j, g) triples at a time."""
        gallery, cols = self.v.shape[0] - self.num_query, self.gallery_columns
        block = self.v[start:stop]
        lengths = cols.indptr[block.indices + 1] - cols.indptr[block.indices]   # gallery items under each entry
        total = np.concatenate([[0], np.cumsum(lengths)])
        per_row = total[block.indptr[1:]] - total[block.indptr[:-1]]
        common = np.zeros((stop - start) * gallery)
        first = 0
        while first < stop - start:
            # as many rows as fit TRIPLE_CHUNK (at least one)
            last = first + max(1, int(np.searchsorted(np.cumsum(per_row[first:]), TRIPLE_CHUNK, side="right")))
            entries = slice(block.indptr[first], block.indptr[last])
            counts = lengths[entries]
            starts = cols.indptr[block.indices[entries]]
            positions = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
            owner = np.repeat(np.repeat(np.arange(first, last), np.diff(block.indptr[first:last + 1])), counts)
            mins = np.minimum(np.repeat(block.data[entries], counts), cols.data[positions])
            common += np.bincount(owner * gallery + cols.indices[positions], weights=mins,
                                  minlength=len(common))
            first = last
        common = common.reshape(stop - start, gallery)
        union = self.v_sums[start:stop, None] + self.v_sums[None, self.num_query:] - common
        return 1 - np.divide(common, union, out=np.zeros_like(common), where=union > 0)

    def blocks(self) -> Iterator[np.ndarray]:
        q = self.num_query
        for start in range(0, q, self.block_size):
            stop = min(start + self.block_size, q)
            original = self._distances(slice(start, stop), slice(q, None)).double().cpu().numpy()
            original /= self.scale[start:stop, None]
            yield (1 - self.lambda_value) * self._jaccard_block(start, stop) + self.lambda_value * original

    def distances(self) -> np.ndarray:
        gallery = len(self.features) - self.num_query
        return np.concatenate(list(self.blocks())) if self.num_query else np.zeros((0, gallery))
