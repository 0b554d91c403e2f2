"""The segmentation training loss, for train_seg.py and the tools that time its training step."""
import torch.nn.functional as F
from torch import nn

from lib.data.seg_transforms import IGNORE_INDEX


class SegLoss(nn.Module):
    """Cross-entropy of the decode head + aux_weight x that of the auxiliary head, 255 ignored.

    As mmsegmentation's CrossEntropyLoss (avg_non_ignore=False, its default), the per-pixel losses are averaged
    over all pixels, ignored ones counting as 0 (docs/segmentation.md).
    """

    def __init__(self, aux_weight=0.4):
        super().__init__()
        self.aux_weight = aux_weight

    @staticmethod
    def pixel_loss(logits, target):
        return F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="none").mean()

    def forward(self, outputs, target):
        """(total loss, {"decode": ..., "aux": ...} as floats-to-be)."""
        parts = {"decode": self.pixel_loss(outputs["out"], target)}
        total = parts["decode"]
        if "aux" in outputs and self.aux_weight:
            parts["aux"] = self.pixel_loss(outputs["aux"], target)
            total = total + self.aux_weight * parts["aux"]
        return total, parts

