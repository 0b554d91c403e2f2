"""Aspect-ratio grouped training batches whose order is a function of (seed, epoch, num_replicas, rank).

Batching images of similar shape (all wide or all tall) wastes less padding when the detector pads a batch to its
largest image (torchvision's detection reference, `--aspect-ratio-group-factor 3`). The per-rank order and each
sample's augmentation seed come from lib.data.samplers.EpochShuffleSampler, so resumes are exact as elsewhere.
"""
import bisect
import math
from typing import List, Sequence

import numpy as np
from torch.utils.data import Sampler

from lib.data.samplers import EpochShuffleSampler


def aspect_ratio_groups(aspect_ratios: Sequence[float], group_factor: int) -> List[int]:
    """Group id of each width / height ratio: 2 * group_factor + 2 bins split at 2 ** linspace(-1, 1, 2k + 1)
    (the reference's quantization: k = 3 gives bin edges from 1/2 to 2); factor 0 = one group."""
    if group_factor < 0:
        raise ValueError(f"group_factor must be >= 0, got {group_factor}")
    if group_factor == 0:
        return [0] * len(aspect_ratios)
    edges = (2.0 ** np.linspace(-1, 1, 2 * group_factor + 1)).tolist()
    return [bisect.bisect_right(edges, ratio) for ratio in aspect_ratios]


class GroupedBatchSampler(Sampler):
    """Batches of batch_size (index, augmentation seed) pairs, each batch from one aspect-ratio group.

    The rank's shuffled samples are dealt into per-group buffers in order; a buffer that fills becomes a batch.
    The leftovers of all groups, in order, make the last (mixed) batches, so every sample of the rank is used once
    and every rank yields ceil(num_samples / batch_size) batches (equal across ranks, which DDP needs).
    Call set_epoch(epoch) before each epoch; set_epoch(epoch, skip=n) leaves out the epoch's first n batches once
    (a resume inside an epoch). Use with lib.data.samplers.SeededAugmentation.
    """

    def __init__(self, dataset, group_ids: Sequence[int], batch_size: int, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0):
        if len(group_ids) != len(dataset):
            raise ValueError(f"{len(group_ids)} group ids for {len(dataset)} samples")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.samples = EpochShuffleSampler(dataset, num_replicas=num_replicas, rank=rank, seed=seed)
        self.group_ids, self.batch_size, self.skip = list(group_ids), batch_size, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        if not 0 <= skip <= self.num_batches:
            raise ValueError(f"skip must be in [0, {self.num_batches}], got {skip}")
        self.samples.set_epoch(epoch)
        self.skip = skip

    @property
    def num_batches(self) -> int:
        return math.ceil(self.samples.num_samples / self.batch_size)

    def __len__(self) -> int:
        return self.num_batches - self.skip

    def _batches(self):
        buffers = {}
        for index, seed in self.samples:
            buffer = buffers.setdefault(self.group_ids[index], [])
            buffer.append((index, seed))
            if len(buffer) == self.batch_size:
                yield list(buffer)
                buffer.clear()
        leftovers = [pair for group in sorted(buffers) for pair in buffers[group]]
        for start in range(0, len(leftovers), self.batch_size):
            yield leftovers[start:start + self.batch_size]

    def __iter__(self):
        skip, self.skip = self.skip, 0
        for number, batch in enumerate(self._batches()):
            if number >= skip:
                yield batch
