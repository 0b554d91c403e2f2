"""Batches for iteration-based training whose content is a function of (seed, iteration) alone.

The training stream is the concatenation of per-epoch permutations of the dataset (epoch e's permutation drawn
from (seed, e)); iteration i of process r (of w, batch b per process) takes stream positions
[(i w + r) b, (i w + r + 1) b). Each position also carries an augmentation seed drawn from (seed, epoch, index).
A run resumed at iteration k therefore starts exactly where the uninterrupted run was, without replaying any
earlier batch, and the result does not depend on the number of loader workers. No epoch boundary drops or pads
anything: a dataset smaller than the global batch simply wraps into the next epoch.
"""
import numpy as np
from torch.utils.data import Sampler


class IterationBatchSampler(Sampler):
    """Yields, for iterations start_iter .. total_iters - 1, a list of (index, augmentation seed) pairs (a batch)."""

    def __init__(self, dataset_len, batch_size, total_iters, start_iter=0, rank=0, world_size=1, seed=0):
        if dataset_len < 1:
            raise ValueError("the training set is empty")
        self.dataset_len = dataset_len
        self.batch_size = batch_size
        self.total_iters = total_iters
        self.start_iter = start_iter
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self._epoch = None
        self._order = self._aug_seeds = None

    def _epoch_tables(self, epoch):
        if epoch != self._epoch:
            # 32-bit seeds: torch's CPU generator keeps only the low 32 bits of a seed anyway.
            rng = np.random.default_rng([self.seed, epoch])
            self._order = rng.permutation(self.dataset_len)
            self._aug_seeds = rng.integers(0, 2**32, size=self.dataset_len)
            self._epoch = epoch
        return self._order, self._aug_seeds

    def batch(self, iteration):
        start = (iteration * self.world_size + self.rank) * self.batch_size
        pairs = []
        for position in range(start, start + self.batch_size):
            order, aug_seeds = self._epoch_tables(position // self.dataset_len)
            index = int(order[position % self.dataset_len])
            pairs.append((index, int(aug_seeds[index])))
        return pairs

    def __iter__(self):
        for iteration in range(self.start_iter, self.total_iters):
            yield self.batch(iteration)

    def __len__(self):
        return max(self.total_iters - self.start_iter, 0)
