"""COCO evaluation of detector outputs with pycocotools' COCOeval (docs/detection.md, "Evaluation").

    results = to_coco_results(model(images), [t["image_id"] for t in targets], dataset.label_to_category)
    merged = merge_results(results_of_every_process)         # once, after the all_gather
    metrics, summary = evaluate_coco(dataset.coco, merged, ("bbox", "segm"))
    metrics["bbox_AP"], metrics["segm_AP50"], ...

The metrics are COCO's twelve summary numbers (Lin et al., "Microsoft COCO: Common Objects in Context",
ECCV 2014; cocodataset.org/#detection-eval): AP averaged over IoU 0.50:0.95, AP at 0.50 and 0.75, AP of small /
medium / large objects, and AR at 1 / 10 / 100 detections and per size, as COCOeval.summarize() prints them.
COCOeval reports -1 where the ground truth has no object of that size.
"""
import contextlib
import copy
import io
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

# COCOeval.stats, in order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_TYPES = ("bbox", "segm")
MASK_THRESHOLD = 0.5  # torchvision's masks are per-pixel probabilities; the reference binarizes them at 0.5


def to_coco_results(outputs: Sequence[Mapping], image_ids: Sequence[int], label_to_category: Mapping[int, int],
                    mask_threshold: float = MASK_THRESHOLD) -> List[dict]:
    """One COCO result dict per detection: image_id, category_id (the dataset's own id), score, bbox [x, y, w, h]
    and, where the output has masks (N, 1, H, W), segmentation as compressed RLE (counts a str, JSON-ready)."""
    results = []
    for output, image_id in zip(outputs, image_ids):
        boxes = output["boxes"].detach().float().cpu().numpy().reshape(-1, 4)
        boxes[:, 2:] -= boxes[:, :2]
        scores = output["scores"].detach().float().cpu().tolist()
        labels = output["labels"].detach().cpu().tolist()
        rles = [None] * len(labels)
        if "masks" in output:
            binary = (output["masks"].detach().float().cpu().numpy()[:, 0] > mask_threshold).astype(np.uint8)
            rles = [mask_utils.encode(np.asfortranarray(m)) for m in binary]
        for box, score, label, rle in zip(boxes.tolist(), scores, labels, rles):
            result = dict(image_id=int(image_id), category_id=int(label_to_category[label]), bbox=box, score=score)
            if rle is not None:
                result["segmentation"] = dict(size=[int(s) for s in rle["size"]], counts=rle["counts"].decode())
            results.append(result)
    return results


def merge_results(per_process: Sequence[Sequence[dict]]) -> List[dict]:
    """Concatenate the results of several processes, each image's detections taken from the first process that
    has any for it: an image evaluated twice (a padded shard) counts once. Pure: the inputs are not modified."""
    owner = {}
    merged = []
    for rank, results in enumerate(per_process):
        for result in results:
            if owner.setdefault(result["image_id"], rank) == rank:
                merged.append(result)
    return merged


def results_for(results: Sequence[dict], iou_type: str) -> List[dict]:
    """The results as COCOeval wants them for iou_type: segm without bbox (so that a detection's area is its
    mask's, as in a segm results file), bbox without segmentation."""
    drop = "bbox" if iou_type == "segm" else "segmentation"
    if iou_type == "segm" and any("segmentation" not in r for r in results):
        raise ValueError("segm evaluation needs a segmentation in every result (a mask model's outputs)")
    return [{k: v for k, v in r.items() if k != drop} for r in results]


def evaluate_coco(coco_gt, results: Sequence[dict], iou_types: Sequence[str] = IOU_TYPES,
                  image_ids: Optional[Sequence[int]] = None) -> Tuple[Dict[str, float], str]:
    """COCOeval of results against coco_gt (pycocotools COCO) for each iou type, over image_ids (None: every
    image of coco_gt). Returns ({"bbox_AP": ..., "segm_ARl": ...}, COCOeval's printed summary): nothing is
    printed. With no detection at all every metric is 0.0."""
    metrics, text = {}, io.StringIO()
    image_ids = sorted(coco_gt.getImgIds() if image_ids is None else set(image_ids))
    for iou_type in iou_types:
        if iou_type not in IOU_TYPES:
            raise ValueError(f"unknown iou type {iou_type!r}; valid: {', '.join(IOU_TYPES)}")
        typed = results_for(results, iou_type)
        if not typed:  # loadRes refuses an empty list
            metrics.update({f"{iou_type}_{name}": 0.0 for name in STAT_NAMES})
            text.write(f"{iou_type}: no detections\n")
            continue
        with contextlib.redirect_stdout(text):
            # loadRes annotates the dicts it gets (area, id, bbox of masks): give it copies.
            evaluator = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(typed)), iou_type)
            evaluator.params.imgIds = image_ids
            evaluator.evaluate()
            evaluator.accumulate()
            print(f"{iou_type}:")
            evaluator.summarize()
        metrics.update({f"{iou_type}_{name}": float(value) for name, value in zip(STAT_NAMES, evaluator.stats)})
    return metrics, text.getvalue()
