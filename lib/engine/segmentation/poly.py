"""Polynomial ("poly") learning-rate decay by iteration, as in mmsegmentation's schedules (docs/segmentation.md).

    lr(i) = (base_lr - min_lr) * (1 - i / total_iters) ** power + min_lr,   i = 0-based iteration

The lr is a pure function of the iteration, so a run resumed at any iteration uses exactly the lr of an
uninterrupted one.
"""
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class PolySchedule:
    """base_lr at iteration 0, decaying to min_lr at iteration total_iters (never reached: the last step uses
    i = total_iters - 1)."""
    base_lr: float
    total_iters: int
    power: float = 0.9
    min_lr: float = 1e-4

    def lr_at(self, iteration: int) -> float:
        if not 0 <= iteration <= self.total_iters:
            raise ValueError(f"iteration must be in [0, {self.total_iters}], got {iteration}")
        return (self.base_lr - self.min_lr) * (1 - iteration / self.total_iters) ** self.power + self.min_lr

    def state_dict(self):
        """Stored in checkpoints as a record of the schedule the iterations were trained with."""
        return asdict(self)
