"""P identities x K instances batches for re-ID (Hermans et al. 2017, "In Defense of the Triplet Loss"; BoT's
RandomIdentitySampler), with every draw a function of (seed, epoch) so that resumes are exact.

    sampler = IdentityBatchSampler(train_set.pids, batch_size=64, num_instances=4, seed=0)   # P = 16
    loader = DataLoader(SeededAugmentation(train_set), batch_sampler=sampler, num_workers=4)
    for epoch in ...:
        sampler.set_epoch(epoch)

An epoch: the identities are shuffled by (seed, epoch) and dealt to the processes round-robin (rank r gets every
num_replicas-th one: disjoint). Each identity's images are shuffled and cut into chunks of K; an identity with
fewer than K images fills its one chunk by drawing with replacement; a remainder under K is dropped (BoT). Batches
are then formed by repeatedly drawing P distinct identities that still have chunks, uniformly, and taking one
chunk of each, until fewer than P remain. All ranks run as many batches (the smallest count): DDP needs it.
Each slot of the epoch gets its own augmentation seed (so two copies of one image in a batch are augmented
independently): batches are lists of (index, seed), the keys lib.data.samplers.SeededAugmentation takes.
"""
from typing import List, Sequence, Tuple

import numpy as np
from torch.utils.data import Sampler

from lib.errors import ConfigError


class IdentityBatchSampler(Sampler):
    """A batch sampler yielding lists of batch_size (index, augmentation seed) pairs, num_instances per identity.

    pids: the identity of every item of the dataset (training labels). len() is this rank's batch count for the
    current epoch (exact: the plan is drawn when asked). set_epoch(epoch, skip=n) leaves out this rank's first n
    batches of that epoch once (a resume inside an epoch).
    """

    def __init__(self, pids: Sequence[int], batch_size: int, num_instances: int = 4, num_replicas: int = 1,
                 rank: int = 0, seed: int = 0):
        if num_instances < 1 or batch_size < num_instances or batch_size % num_instances:
            raise ConfigError(f"batch size {batch_size} must be a positive multiple of num_instances "
                              f"{num_instances}")
        if not 0 <= rank < num_replicas:
            raise ConfigError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.pids = np.asarray(pids)
        self.identities = np.unique(self.pids)
        self.num_ids = batch_size // num_instances
        self.batch_size, self.num_instances = batch_size, num_instances
        self.num_replicas, self.rank, self.seed = num_replicas, rank, seed
        if len(self.identities) < self.num_ids * num_replicas:
            raise ConfigError(f"{len(self.identities)} training identities cannot fill batches of "
                              f"{self.num_ids} identities on {num_replicas} process(es)")
        self.members = {pid: np.flatnonzero(self.pids == pid) for pid in self.identities}
        self.epoch, self.skip = 0, 0
        self._plan_epoch, self._plan = None, None

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch = epoch
        if not 0 <= skip <= len(self._batches()):
            raise ValueError(f"skip must be in [0, {len(self._batches())}], got {skip}")
        self.skip = skip

    def _rank_batches(self, rng: np.random.Generator, identities: np.ndarray) -> List[np.ndarray]:
        chunks = {}
        for pid in identities:
            members = self.members[pid]
            if len(members) < self.num_instances:
                members = rng.choice(members, self.num_instances, replace=True)
            else:
                members = rng.permutation(members)
            whole = len(members) // self.num_instances * self.num_instances
            chunks[pid] = list(members[:whole].reshape(-1, self.num_instances))
        batches = []
        while True:
            available = [pid for pid in identities if chunks[pid]]
            if len(available) < self.num_ids:
                return batches
            chosen = rng.choice(available, self.num_ids, replace=False)
            batches.append(np.concatenate([chunks[pid].pop(0) for pid in chosen]))

    def _batches(self) -> List[List[Tuple[int, int]]]:
        """This rank's batches of the current epoch, drawn once per epoch from (seed, epoch)."""
        if self._plan_epoch == self.epoch:
            return self._plan
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.identities)
        per_rank = [self._rank_batches(np.random.default_rng([self.seed, self.epoch, 1, rank]),
                                       order[rank::self.num_replicas]) for rank in range(self.num_replicas)]
        count = min(len(batches) for batches in per_rank)
        mine = per_rank[self.rank][:count]
        seeds = np.random.default_rng([self.seed, self.epoch, 2, self.rank]).integers(
            0, 2**32, size=(count, self.batch_size))
        self._plan = [[(int(i), int(s)) for i, s in zip(batch, batch_seeds)] for batch, batch_seeds in
                      zip(mine, seeds)]
        self._plan_epoch = self.epoch
        return self._plan

    def __len__(self) -> int:
        return len(self._batches()) - self.skip

    def __iter__(self):
        skip, self.skip = self.skip, 0
        yield from self._batches()[skip:]
