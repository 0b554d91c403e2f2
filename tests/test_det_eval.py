"""COCO evaluation (lib/engine/detection/evaluation.py): results in the dataset's ids, the merge over processes,
and COCOeval numbers of hand-made predictions against values computed by hand."""
import contextlib
import io

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from lib.engine.detection.evaluation import STAT_NAMES, evaluate_coco, merge_results, to_coco_results

SIZE = 100
LABEL_TO_CATEGORY = {1: 5, 2: 9}  # contiguous labels of the heads -> the dataset's ids (with a gap)
# image id -> (category id, box xyxy): 40 x 40 boxes, medium objects in COCO's size ranges
GROUND_TRUTH = {1: (5, (10, 10, 50, 50)), 2: (5, (30, 20, 70, 60)), 3: (9, (50, 50, 90, 90)), 4: (9, (0, 40, 40, 80))}


def box_mask(box):
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[box[1]:box[3], box[0]:box[2]] = 1
    return mask


def ground_truth():
    images = [dict(id=i, file_name=f"{i}.png", height=SIZE, width=SIZE) for i in GROUND_TRUTH]
    anns = []
    for image_id, (cat, box) in GROUND_TRUTH.items():
        rle = mask_utils.encode(np.asfortranarray(box_mask(box)))
        anns.append(dict(id=image_id, image_id=image_id, category_id=cat, iscrowd=0, area=1600.0,
                         bbox=[box[0], box[1], box[2] - box[0], box[3] - box[1]],
                         segmentation=dict(size=rle["size"], counts=rle["counts"].decode())))
    coco = COCO()
    coco.dataset = dict(images=images, annotations=anns, categories=[dict(id=5, name="a"), dict(id=9, name="b")])
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def prediction(box, label, score):
    """One image's model output as torchvision's Mask R-CNN gives it (masks as probabilities (N, 1, H, W))."""
    masks = torch.from_numpy(box_mask(box)).float()[None, None] * 0.9  # above the 0.5 threshold inside the box
    return dict(boxes=torch.tensor([box], dtype=torch.float32), labels=torch.tensor([label]),
                scores=torch.tensor([score]), masks=masks)


def predictions(wrong_score=None):
    """Perfect predictions; with wrong_score, image 4's object (category 9) labelled as category 5 at that score."""
    category_to_label = {category: label for label, category in LABEL_TO_CATEGORY.items()}
    outputs = []
    for image_id, (cat, box) in GROUND_TRUTH.items():
        if image_id == 4 and wrong_score is not None:
            outputs.append(prediction(box, category_to_label[5], wrong_score))
        else:
            outputs.append(prediction(box, category_to_label[cat], 0.9))
    return to_coco_results(outputs, list(GROUND_TRUTH), LABEL_TO_CATEGORY)


def test_results_use_dataset_ids_xywh_and_rle():
    results = predictions()
    assert [r["category_id"] for r in results] == [5, 5, 9, 9]
    assert results[0]["bbox"] == [10, 10, 40, 40] and results[0]["image_id"] == 1
    assert isinstance(results[0]["segmentation"]["counts"], str)  # JSON-ready
    assert np.array_equal(mask_utils.decode(results[2]["segmentation"]), box_mask(GROUND_TRUTH[3][1]))


def test_perfect_predictions_score_one(capsys):
    metrics, summary = evaluate_coco(ground_truth(), predictions())
    assert capsys.readouterr().out == ""  # COCOeval's printing is captured
    assert "Average Precision" in summary
    assert set(metrics) == {f"{t}_{n}" for t in ("bbox", "segm") for n in STAT_NAMES}
    for iou_type in ("bbox", "segm"):
        for name in ("AP", "AP50", "AP75", "APm", "AR100"):
            assert metrics[f"{iou_type}_{name}"] == pytest.approx(1.0)
        assert metrics[f"{iou_type}_APs"] == -1 and metrics[f"{iou_type}_APl"] == -1  # no such objects


def test_one_wrong_class_drops_ap_by_hand():
    # Category 9 keeps one of its two objects: precision 1 up to recall 0.5, i.e. 51 of COCO's 101 recall points.
    ap_9 = 51 / 101
    # Category 5, wrong detection scored below its two true ones: the PR curve reaches recall 1 at precision 1.
    metrics, _ = evaluate_coco(ground_truth(), predictions(wrong_score=0.5), ("bbox",))
    assert metrics["bbox_AP"] == pytest.approx((1 + ap_9) / 2)
    assert metrics["bbox_AP50"] == pytest.approx((1 + ap_9) / 2)
    assert metrics["bbox_AR100"] == pytest.approx((1 + 0.5) / 2)
    # Scored above them: precision 1/2 at recall 1/2, 2/3 at recall 1; interpolated, 2/3 at every recall point.
    metrics, _ = evaluate_coco(ground_truth(), predictions(wrong_score=0.95), ("bbox", "segm"))
    for iou_type in ("bbox", "segm"):
        assert metrics[f"{iou_type}_AP"] == pytest.approx((2 / 3 + ap_9) / 2)


def test_evaluation_over_some_images_and_without_detections():
    metrics, _ = evaluate_coco(ground_truth(), [r for r in predictions() if r["image_id"] in (1, 3)], ("bbox",),
                               image_ids=[1, 3])
    assert metrics["bbox_AP"] == pytest.approx(1.0)
    metrics, summary = evaluate_coco(ground_truth(), [])
    assert all(value == 0.0 for value in metrics.values()) and "no detections" in summary


def test_merge_counts_each_image_once():
    results = predictions()
    rank0 = [r for r in results if r["image_id"] in (1, 2)]
    rank1 = [r for r in results if r["image_id"] in (2, 3, 4)]  # image 2 again: a padded shard
    second = dict(rank1[0], score=0.1)  # a second detection of image 2 on rank 1: dropped with the image
    merged = merge_results([rank0, [second] + rank1])
    assert sorted(r["image_id"] for r in merged) == [1, 2, 3, 4]
    assert merged == rank0 + rank1[1:]
    assert merge_results([]) == [] and len(rank1) == 3  # inputs untouched
    metrics, _ = evaluate_coco(ground_truth(), merged, ("bbox",))
    assert metrics["bbox_AP"] == pytest.approx(1.0)


def test_pieces_compose_on_fake_data(tmp_path):
    """fake data -> grouped batches -> one training step -> eval -> COCO results -> COCOeval: what train_det.py
    strings together (numbers are meaningless after one step; the plumbing is what is checked)."""
    from torch.utils.data import DataLoader

    from lib.data.coco import build_detection_datasets, collate_detection
    from lib.data.grouped_sampler import GroupedBatchSampler, aspect_ratio_groups
    from lib.data.samplers import ContiguousShardSampler, SeededAugmentation
    from models import build_model

    train_set, val_set, num_classes = build_detection_datasets("fake", str(tmp_path), fake_images=4)
    sampler = GroupedBatchSampler(train_set, aspect_ratio_groups(train_set.aspect_ratios(), 3), 2, seed=0)
    sampler.set_epoch(0)
    loader = DataLoader(SeededAugmentation(train_set), batch_sampler=sampler, collate_fn=collate_detection)
    torch.manual_seed(0)
    model = build_model("maskrcnn", 18, num_classes=num_classes, nl_type="snl", nl_nums=1, min_size=64, max_size=96,
                        rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50, box_batch_size_per_image=32,
                        box_score_thresh=0.0, box_detections_per_img=5)
    images, targets = next(iter(loader))
    losses = model.train()(images, targets)
    sum(losses.values()).backward()
    model.eval()
    val_loader = DataLoader(val_set, sampler=ContiguousShardSampler(val_set), batch_size=2,
                            collate_fn=collate_detection)
    results = []
    with torch.no_grad():
        for images, targets in val_loader:
            results += to_coco_results(model(images), [t["image_id"] for t in targets], val_set.label_to_category)
    assert results and {r["category_id"] for r in results} <= {1, 3, 7}
    metrics, _ = evaluate_coco(val_set.coco, merge_results([results]))
    assert 0.0 <= metrics["bbox_AP"] <= 1.0 and 0.0 <= metrics["segm_AP"] <= 1.0
