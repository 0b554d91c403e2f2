"""Samplers that make the data order, and the random augmentation, functions of (seed, epoch) alone.

Training resumes mid-run must see exactly the batches an uninterrupted run would. EpochShuffleSampler orders
the data as DistributedSampler does (a permutation drawn from seed + epoch, split across ranks) and pairs each
index with an augmentation seed drawn from (seed, epoch, index); SeededAugmentation draws that sample's random
transforms from that seed. So crops and flips do not depend on the number of workers, on persistent workers, on
where the run was resumed, or on the global RNG, which data loading then never touches.
"""
import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler


class EpochShuffleSampler(DistributedSampler):
    """Shuffled training order for one process (num_replicas=1) or one rank; yields (index, augmentation seed).

    Call set_epoch(epoch) before each epoch: the order is then a pure function of (seed, epoch, num_replicas,
    rank). If an epoch is iterated without set_epoch, the sampler moves on to the next epoch by itself (so a
    forgotten call still reshuffles, like the reference's shuffle=True), but only set_epoch makes a resume exact.
    set_epoch(epoch, skip=n) leaves out this rank's first n samples of that epoch, once: a run resumed inside an
    epoch continues with exactly the samples the uninterrupted run saw next.
    As DistributedSampler, with several ranks it pads the order by repeating indices so all ranks get as many.
    """

    def __init__(self, dataset, num_replicas=1, rank=0, seed=0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self._epoch_set = True  # epoch 0 is in effect until set_epoch is called
        self.skip = 0

    def set_epoch(self, epoch, skip=0):
        if not 0 <= skip <= self.num_samples:
            raise ValueError(f"skip must be in [0, {self.num_samples}], got {skip}")
        super().set_epoch(epoch)
        self._epoch_set = True
        self.skip = skip

    def __len__(self):
        return self.num_samples - self.skip

    def __iter__(self):
        # A generator: nothing (not even the epoch bump) happens until the DataLoader asks for the first index.
        if not self._epoch_set:
            self.epoch += 1
        self._epoch_set = False
        skip, self.skip = self.skip, 0
        indices = list(super().__iter__())[skip:]
        # 32-bit seeds: torch's CPU generator keeps only the low 32 bits of a seed anyway.
        aug_seeds = np.random.default_rng([self.seed, self.epoch]).integers(0, 2**32, size=len(self.dataset))
        for index in indices:
            yield index, int(aug_seeds[index])


class SeededAugmentation(Dataset):
    """Wraps a dataset so that item (index, seed) is dataset[index] with the CPU RNG seeded to `seed` meanwhile.

    torchvision's random transforms draw from torch's default CPU generator; its state is restored afterwards, so
    the caller's RNG stream (dropout, init) is unaffected. CUDA generators are not touched. A plain int index is
    passed through unseeded.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.dataset[key]
        index, seed = key
        generator = torch.default_generator
        saved = generator.get_state()
        generator.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            generator.set_state(saved)


class ContiguousShardSampler(Sampler):
    """Rank r of n gets indices [len*r//n, len*(r+1)//n): disjoint, contiguous, no padding.

    For validation: every image is counted exactly once across ranks (DistributedSampler would pad with
    duplicates). Shards differ in size by at most one, so ranks must sum correct counts and sample counts
    (all_reduce), not average per-rank accuracies.
    """

    def __init__(self, dataset, num_replicas=1, rank=0):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.start = len(dataset) * rank // num_replicas
        self.stop = len(dataset) * (rank + 1) // num_replicas

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self):
        return self.stop - self.start


class BatchSkipInSamples:
    """A batch sampler (P x K identities, aspect-ratio groups) as the epoch loop drives a sampler: the loop gives a
    resumed epoch's position in samples (iterations x batch size, lib.engine.epochs.run_epochs), a batch sampler
    skips whole batches."""

    def __init__(self, batch_sampler, batch_size):
        self.batch_sampler, self.batch_size = batch_sampler, batch_size

    def set_epoch(self, epoch, skip=0):
        self.batch_sampler.set_epoch(epoch, skip=skip // self.batch_size)
