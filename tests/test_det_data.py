"""COCO-format detection data: label mapping, crowd / empty images, polygon and RLE masks, flips, errors, and the
aspect-ratio grouped sampler (lib/data/coco.py, lib/data/grouped_sampler.py)."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from lib.data.coco import CocoDetection, build_detection_datasets, collate_detection
from lib.data.grouped_sampler import GroupedBatchSampler, aspect_ratio_groups
from lib.errors import ConfigError

H, W = 40, 60
CATS = (3, 10, 42)  # gaps, as COCO's ids


def rect_mask(x0, y0, x1, y1):
    mask = np.zeros((H, W), dtype=np.uint8, order="F")
    mask[y0:y1, x0:x1] = 1
    return mask


def rle(mask, compressed=True):
    encoded = mask_utils.encode(np.asfortranarray(mask))
    if compressed:
        return dict(size=encoded["size"], counts=encoded["counts"].decode())
    flat = mask.flatten(order="F")  # uncompressed RLE: run lengths of 0s and 1s in column-major order, 0s first
    counts, value, run = [], 0, 0
    for pixel in flat.tolist():
        if pixel != value:
            counts.append(run)
            value, run = pixel, 0
        run += 1
    return dict(size=[H, W], counts=counts + [run])


def write_set(root, images, annotations, categories=CATS, skip_files=()):
    """Write images (id -> (H, W)) as PNGs and the json; returns (ann_file, image_dir)."""
    image_dir = os.path.join(root, "images")
    os.makedirs(image_dir, exist_ok=True)
    entries = []
    for image_id, (h, w) in images.items():
        name = f"img{image_id}.png"
        if image_id not in skip_files:
            Image.fromarray(np.full((h, w, 3), image_id % 255, np.uint8)).save(os.path.join(image_dir, name))
        entries.append(dict(id=image_id, file_name=name, height=h, width=w))
    anns = [dict(dict(id=i + 1, iscrowd=0, area=a["bbox"][2] * a["bbox"][3]), **a) for i, a in enumerate(annotations)]
    ann_file = os.path.join(root, "ann.json")
    with open(ann_file, "w") as handle:
        json.dump(dict(images=entries, annotations=anns, categories=[dict(id=c, name=f"c{c}") for c in categories]),
                  handle)
    return ann_file, image_dir


@pytest.fixture
def sample(tmp_path):
    """Image 7: a polygon (cat 42), a compressed RLE (cat 3), an uncompressed RLE (cat 10) and a crowd region;
    image 8: crowd only; image 9: no annotations."""
    anns = [dict(image_id=7, category_id=42, bbox=[2, 3, 10, 8], segmentation=[[2, 3, 12, 3, 12, 11, 2, 11]]),
            dict(image_id=7, category_id=3, bbox=[20, 5, 15, 10], segmentation=rle(rect_mask(20, 5, 35, 15))),
            dict(image_id=7, category_id=10, bbox=[40, 20, 10, 10],
                 segmentation=rle(rect_mask(40, 20, 50, 30), compressed=False)),
            dict(image_id=7, category_id=3, bbox=[0, 30, 20, 10], iscrowd=1,
                 segmentation=rle(rect_mask(0, 30, 20, 40))),
            dict(image_id=8, category_id=10, bbox=[0, 0, 20, 20], iscrowd=1, segmentation=rle(rect_mask(0, 0, 20, 20)))]
    return write_set(str(tmp_path), {7: (H, W), 8: (H, W), 9: (H, W)}, anns)


def test_labels_map_contiguously_and_back(sample):
    data = CocoDetection(*sample, train=True)
    assert data.num_classes == 4
    assert data.label_to_category == {1: 3, 2: 10, 3: 42}
    _, target = data[0]
    assert target["labels"].tolist() == [3, 1, 2]  # cats 42, 3, 10 in annotation order
    assert [data.label_to_category[label] for label in target["labels"].tolist()] == [42, 3, 10]
    as_ids = CocoDetection(*sample, train=True, labels_as_ids=True)  # torchvision's COCO heads: label = id
    assert as_ids.num_classes == 43 and as_ids[0][1]["labels"].tolist() == [42, 3, 10]
    assert as_ids.label_to_category == {3: 3, 10: 10, 42: 42}


def test_training_drops_crowd_and_unannotated_images_val_keeps_them(sample):
    train, val = CocoDetection(*sample, train=True), CocoDetection(*sample, train=False)
    assert train.ids == [7] and val.ids == [7, 8, 9]
    image, target = train[0]
    assert image.shape == (3, H, W) and image.dtype == torch.float32
    assert target["image_id"] == 7 and target["iscrowd"].tolist() == [0, 0, 0]
    assert target["boxes"].tolist() == [[2, 3, 12, 11], [20, 5, 35, 15], [40, 20, 50, 30]]  # xyxy
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    for index in (1, 2):  # crowd only, none: empty but well-formed targets
        _, empty = val[index]
        assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
        assert empty["masks"].shape == (0, H, W) and empty["masks"].dtype == torch.uint8


def test_polygon_and_rle_masks_decode(sample):
    masks = CocoDetection(*sample, train=True)[0][1]["masks"]
    assert masks.shape == (3, H, W) and masks.dtype == torch.uint8
    # Both RLE kinds are exact; the polygon's rasterization covers its interior and nothing far outside.
    assert torch.equal(masks[1], torch.from_numpy(rect_mask(20, 5, 35, 15)))
    assert torch.equal(masks[2], torch.from_numpy(rect_mask(40, 20, 50, 30)))
    assert masks[0][4:10, 3:11].all() and masks[0].sum() == masks[0][2:13, 1:14].sum()


def test_hflip_flips_image_boxes_and_masks(sample):
    plain = CocoDetection(*sample, train=True)[0]
    image, target = CocoDetection(*sample, train=True, hflip=1.0)[0]
    assert torch.equal(image, plain[0].flip(-1))
    assert target["boxes"][0].tolist() == [W - 12, 3, W - 2, 11]
    assert torch.equal(target["masks"], plain[1]["masks"].flip(-1))
    with pytest.raises(ConfigError, match="hflip"):
        CocoDetection(*sample, train=True, hflip=1.5)


def test_collate_keeps_lists(sample):
    data = CocoDetection(*sample, train=False)
    images, targets = collate_detection([data[0], data[1]])
    assert isinstance(images, list) and len(images) == 2 and targets[1]["image_id"] == 8


def one_line(error):
    return "\n" not in str(error.value)


def test_broken_json_missing_image_and_box_outside_image_are_one_line_errors(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(ConfigError, match="broken.json") as error:
        CocoDetection(str(broken), str(tmp_path), train=True)
    assert one_line(error)
    box = dict(image_id=1, category_id=3, bbox=[0, 0, 5, 5], segmentation=[[0, 0, 5, 0, 5, 5]])
    missing = write_set(str(tmp_path / "missing"), {1: (H, W)}, [box], skip_files={1})
    with pytest.raises(ConfigError, match="img1.png") as error:
        CocoDetection(*missing, train=True)[0]
    assert one_line(error)
    outside = write_set(str(tmp_path / "outside"), {1: (H, W)}, [dict(box, bbox=[50, 10, 30, 5])])
    with pytest.raises(ConfigError, match="annotation 1.*outside its image img1.png") as error:
        CocoDetection(*outside, train=True)
    assert one_line(error)
    unknown = write_set(str(tmp_path / "unknown"), {1: (H, W)}, [dict(box, image_id=5)])
    with pytest.raises(ConfigError, match="image 5"):
        CocoDetection(*unknown, train=True)


def test_datasets_by_name(tmp_path, sample):
    train, val, num_classes = build_detection_datasets("cocoformat", train_ann=sample[0], train_images=sample[1],
                                                       val_ann=sample[0], val_images=sample[1])
    assert num_classes == 4 and len(train) == 1 and len(val) == 3
    with pytest.raises(ConfigError, match="--val-ann"):
        build_detection_datasets("cocoformat", train_ann=sample[0], train_images=sample[1])
    with pytest.raises(ConfigError, match="annotation file not found.*instances_train2017.json"):
        build_detection_datasets("coco", str(tmp_path / "nowhere"))
    train, val, num_classes = build_detection_datasets("fake", str(tmp_path / "fake"), fake_images=6)
    assert num_classes == 4 and train.label_to_category == {1: 1, 2: 3, 3: 7} and len(val) == 6
    image, target = train[0]
    assert target["masks"].shape[1:] == image.shape[1:] and len(target["boxes"]) >= 1


def test_aspect_ratio_groups():
    # k = 3: edges 2 ** (-1, -2/3, ..., 1); 8 groups from very tall to very wide.
    assert aspect_ratio_groups([0.4, 0.6, 1.0, 1.01, 1.5, 3.0], 3) == [0, 1, 4, 4, 5, 7]
    assert aspect_ratio_groups([0.4, 3.0], 0) == [0, 0]


def test_grouped_batches_are_a_function_of_seed_epoch_and_rank():
    data = list(range(23))
    groups = [i % 3 for i in data]

    def batches(epoch, seed=0, replicas=1, rank=0, batch=4):
        sampler = GroupedBatchSampler(data, groups, batch, num_replicas=replicas, rank=rank, seed=seed)
        sampler.set_epoch(epoch)
        return [[i for i, _ in b] for b in sampler], sampler

    first, sampler = batches(0)
    assert first == batches(0)[0] and first != batches(1)[0] and first != batches(0, seed=1)[0]
    assert sorted(i for b in first for i in b) == data and len(first) == len(sampler) == 6
    full = [b for b in first if len(b) == 4]
    assert len(full) >= 4 and all(len({groups[i] for i in b}) == 1 for b in full[:4])
    shards = [batches(2, replicas=2, rank=r)[0] for r in (0, 1)]
    assert len(shards[0]) == len(shards[1])  # every rank takes as many steps
    assert set(i for s in shards for b in s for i in b) == set(data)
    sampler.set_epoch(0, skip=2)
    assert [[i for i, _ in b] for b in sampler] == first[2:]
    # the augmentation seeds are the same whatever the batch size
    def seeds(batch_size):
        return dict(p for b in GroupedBatchSampler(data, groups, batch_size) for p in b)
    assert seeds(4) == seeds(5)
