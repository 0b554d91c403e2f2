"""Semantic segmentation metrics from a confusion matrix: per-class IoU, mIoU, pixel accuracy.

The confusion matrix counts pixels (rows: ground-truth class, columns: predicted class) over the whole validation
set; under torchrun each process counts its own images and the matrices are summed (every image exactly once), so
the metrics are those of one pass over all images, not a mean of per-process or per-image values.

    IoU_c = TP_c / (TP_c + FP_c + FN_c)   (NaN where the class is in neither prediction nor ground truth)
    mIoU  = mean of IoU_c over the classes whose IoU is not NaN
    aAcc  = sum_c TP_c / number of labelled pixels;   Acc_c = TP_c / (TP_c + FN_c)  (NaN if the class is absent)

Pixels labelled ignore_index (255) are not counted at all, whatever their prediction.
"""
import math

import torch
import torch.distributed as dist

IGNORE_INDEX = 255


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts of (ground truth, prediction) pairs; pred, target: same shape."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long()
    keep = target != ignore_index
    target, pred = target[keep], pred[keep]
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(f"target holds labels outside [0, {num_classes}) other than {ignore_index}")
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu()


def all_reduce_confusion(matrix: torch.Tensor, ctx) -> torch.Tensor:
    """The sum of every process's matrix (int64, exact), on every process; the matrix itself in one process."""
    if not ctx.distributed:
        return matrix
    device = ctx.device if ctx.device.type == "cuda" else torch.device("cpu")  # NCCL: CUDA; gloo: CPU tensors
    total = matrix.to(device=device, dtype=torch.int64).clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.cpu()


def _nan_mean(values):
    present = [v for v in values if not math.isnan(v)]
    return sum(present) / len(present) if present else float("nan")


def segmentation_metrics(matrix: torch.Tensor) -> dict:
    """{'mIoU', 'aAcc', 'mAcc' (percent), 'IoU', 'Acc' (per-class lists, percent, NaN = absent), 'pixels'}."""
    matrix = matrix.to(torch.float64)
    true_positive = matrix.diag()
    gt_pixels = matrix.sum(dim=1)  # TP + FN
    predicted = matrix.sum(dim=0)  # TP + FP
    union = gt_pixels + predicted - true_positive
    iou = [100.0 * float(tp / u) if u > 0 else float("nan") for tp, u in zip(true_positive, union)]
    acc = [100.0 * float(tp / g) if g > 0 else float("nan") for tp, g in zip(true_positive, gt_pixels)]
    pixels = float(matrix.sum())
    return {"mIoU": _nan_mean(iou), "mAcc": _nan_mean(acc),
            "aAcc": 100.0 * float(true_positive.sum()) / pixels if pixels else float("nan"),
            "IoU": iou, "Acc": acc, "pixels": int(pixels)}


def json_number(value):
    """NaN (a class absent from the evaluation) as null, since JSON has no NaN."""
    return None if isinstance(value, float) and math.isnan(value) else value
