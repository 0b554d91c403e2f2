"""Learning rate as a pure function of the epoch: linear warm-up, then step decays (docs/classification.md, "Training").

The reference kept the lr in a global that each decay multiplied in place, so a resumed run restarted from the
undecayed lr. Here lr_at(epoch) depends on nothing else, so a resume at any epoch uses the right lr.
"""
from dataclasses import asdict, dataclass
from typing import Tuple

import numpy as np


@dataclass(frozen=True)
class WarmupStepSchedule:
    """Epochs [0, warmup_epochs): numpy.linspace(base_lr * gamma^len(steps), base_lr, warmup_epochs)[epoch], as the
    reference (CIFAR: from lr * 0.01; ImageNet: from lr * 0.001). Afterwards base_lr * gamma^(steps <= epoch).

    Epochs are 0-based and count the warm-up; steps are absolute epochs (CIFAR recipe: 160, 260).
    """
    base_lr: float
    steps: Tuple[int, ...]
    warmup_epochs: int
    gamma: float = 0.1

    def __post_init__(self):
        object.__setattr__(self, "steps", tuple(int(step) for step in self.steps))

    @property
    def warmup_start_lr(self):
        return self.base_lr * self.gamma ** len(self.steps)

    def lr_at(self, epoch: int) -> float:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch < self.warmup_epochs:
            return float(np.linspace(self.warmup_start_lr, self.base_lr, num=self.warmup_epochs)[epoch])
        return self.base_lr * self.gamma ** sum(1 for step in self.steps if epoch >= step)

    def state_dict(self):
        """Stored in checkpoints as a record of the schedule the epochs were trained with."""
        return asdict(self)


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
