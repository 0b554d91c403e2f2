"""Accuracy counting and running averages.

Accuracies are sums of correct predictions over a count of images (reduced across processes as sums), never a
mean of per-batch percentages: with a smaller last batch, or shards of unequal size, those differ.
"""
import torch


def topk_hits(output: torch.Tensor, target: torch.Tensor, ks=(1, 5)):
    """Number of samples whose target is among the k highest scores, for each k (k is capped at the class count),
    as int64 tensors on the output's device: a training loop sums them there and reads them when it prints."""
    with torch.no_grad():
        maxk = min(max(ks), output.size(1))
        top = output.topk(maxk, dim=1, largest=True, sorted=True).indices
        hits = top.eq(target.view(-1, 1))
        return [hits[:, :min(k, maxk)].any(dim=1).sum() for k in ks]


def topk_correct(output: torch.Tensor, target: torch.Tensor, ks=(1, 5)):
    """topk_hits as Python ints."""
    return [int(hits) for hits in topk_hits(output, target, ks)]


class AverageMeter:
    """Last value and count-weighted average of a quantity."""

    def __init__(self):
        self.val = 0.0
        self.sum = 0.0
        self.count = 0

    def update(self, val: float, n: int = 1) -> None:
        self.val = val
        self.sum += val * n
        self.count += n

    @property
    def avg(self) -> float:
        return self.sum / self.count if self.count else 0.0


def percent(correct: float, count: float) -> float:
    return 100.0 * correct / count if count else 0.0


def format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
