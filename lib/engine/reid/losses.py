"""Re-ID training losses: the BoT recipe (Luo et al., "Bag of Tricks and a Strong Baseline for Deep Person
Re-identification", CVPRW 2019) and AGW's weighted regularized triplet (Ye et al., TPAMI 2021).

    criterion = ReidCriterion(num_classes, feat_dim=2048, triplet="hard", center_weight=5e-4)
    loss, parts = criterion(logits, features, pids)       # features: the pre-BN (BNNeck) feature
    center_optimizer = torch.optim.SGD(criterion.center_parameters(), lr=0.5)   # BoT: its own SGD, lr 0.5

Distances inside a batch are Euclidean (not squared), as in both recipes.
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from lib.errors import ConfigError

TRIPLETS = ("hard", "weighted", "none")


def label_smoothing_ce(logits: torch.Tensor, targets: torch.Tensor, epsilon: float = 0.1) -> torch.Tensor:
    """Cross-entropy against q = (1 - eps) onehot(y) + eps / K (Szegedy et al. 2016, label smoothing; used by BoT)."""
    return F.cross_entropy(logits, targets, label_smoothing=epsilon)


def _euclidean(features: torch.Tensor) -> torch.Tensor:
    squares = (features * features).sum(1)
    sq = (squares[:, None] + squares[None] - 2 * features @ features.t()).clamp_min(0)
    # sqrt'(0) is infinite: the diagonal (and exact duplicates) get a tiny floor, as both reference codes do.
    return sq.clamp_min(1e-12).sqrt()


def _distances_and_masks(features: torch.Tensor, targets: torch.Tensor,
                         normalize: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(batch distances, same-identity mask, other-identity mask): the common start of both triplet losses, which
    also share the requirement that every anchor has a negative in the batch."""
    if normalize:
        features = F.normalize(features, dim=1)
    same = targets[:, None] == targets[None]
    other = ~same
    if not other.any(1).all():
        raise ConfigError("a triplet loss needs at least two identities in every batch")
    return _euclidean(features), same, other


def batch_hard_triplet(features: torch.Tensor, targets: torch.Tensor, margin: float = 0.3,
                       normalize: bool = False) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017, "In Defense of the Triplet Loss"): mean over anchors a of
    max(0, margin + max_{p: y_p = y_a} d(a, p) - min_{n: y_n != y_a} d(a, n)). Every anchor needs a negative in the
    batch (P >= 2); normalize: L2-normalize the features first (off in BoT)."""
    dist, same, other = _distances_and_masks(features, targets, normalize)
    hardest_positive = dist.masked_fill(~same, float("-inf")).max(1).values
    hardest_negative = dist.masked_fill(~other, float("inf")).min(1).values
    return F.relu(hardest_positive - hardest_negative + margin).mean()


def weighted_regularized_triplet(features: torch.Tensor, targets: torch.Tensor,
                                 normalize: bool = False) -> torch.Tensor:
    """AGW's weighted regularized triplet (Ye et al., TPAMI 2021): per anchor i,
    w_ij^p = exp(d_ij) / sum_{k in P_i} exp(d_ik) over its positives (the anchor itself included, as in AGW's
    code), w_ij^n = exp(-d_ij) / sum_{k in N_i} exp(-d_ik) over its negatives, and
    loss_i = log(1 + exp(sum_j w_ij^p d_ij - sum_j w_ij^n d_ij)), averaged: a soft margin, no margin parameter."""
    dist, same, other = _distances_and_masks(features, targets, normalize)
    positive_weights = torch.softmax(dist.masked_fill(~same, float("-inf")), dim=1)
    negative_weights = torch.softmax((-dist).masked_fill(~other, float("-inf")), dim=1)
    furthest_positive = (positive_weights * dist).sum(1)
    closest_negative = (negative_weights * dist).sum(1)
    return F.softplus(furthest_positive - closest_negative).mean()


class CenterLoss(nn.Module):
    """Center loss (Wen et al., ECCV 2016, averaged over the batch): mean_i |x_i - c_{y_i}|^2 with one
    learned centre per class (initialized from a standard normal, as BoT). Its parameters are trained by their
    own optimizer (BoT: SGD lr 0.5, gradients divided by the loss weight before its step)."""

    def __init__(self, num_classes: int, feat_dim: int, device=None, dtype=None):
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim, device=device, dtype=dtype))

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (features - self.centers[targets]).pow(2).sum(1).mean()


class ReidCriterion(nn.Module):
    """CE with label smoothing on the logits + a triplet loss (and optionally a weighted center loss) on the
    pre-BN feature: BoT's total L = L_ID + L_triplet + w L_center; triplet 'weighted' gives AGW.

    forward(logits, features, targets) -> (total, {"ce": ..., "triplet": ..., "center": ...}) (detached parts,
    for logging). label_smoothing 0 turns smoothing off; triplet 'none' drops that term.
    """

    def __init__(self, num_classes: int, feat_dim: int, triplet: str = "hard", margin: float = 0.3,
                 label_smoothing: float = 0.1, center_weight: float = 0.0, device=None, dtype=None):
        super().__init__()
        if triplet not in TRIPLETS:
            raise ConfigError(f"unknown triplet loss {triplet!r}; choose one of {', '.join(TRIPLETS)}")
        if not 0 <= label_smoothing < 1 or center_weight < 0 or margin < 0:
            raise ConfigError(f"need 0 <= label_smoothing < 1, center_weight >= 0, margin >= 0; got "
                              f"{label_smoothing}, {center_weight}, {margin}")
        self.triplet, self.margin = triplet, margin
        self.label_smoothing, self.center_weight = label_smoothing, center_weight
        self.center: Optional[CenterLoss] = (CenterLoss(num_classes, feat_dim, device=device, dtype=dtype)
                                             if center_weight > 0 else None)

    def center_parameters(self):
        return list(self.center.parameters()) if self.center is not None else []

    def forward(self, logits: torch.Tensor, features: torch.Tensor,
                targets: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        parts = {"ce": label_smoothing_ce(logits, targets, self.label_smoothing)}
        if self.triplet == "hard":
            parts["triplet"] = batch_hard_triplet(features, targets, self.margin)
        elif self.triplet == "weighted":
            parts["triplet"] = weighted_regularized_triplet(features, targets)
        if self.center is not None:
            parts["center"] = self.center_weight * self.center(features, targets)
        total = sum(parts.values())
        return total, {name: value.detach() for name, value in parts.items()}
