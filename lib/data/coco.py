"""COCO-format detection / instance segmentation data (docs/detection.md, "Data").

    train_set, val_set, num_classes = build_detection_datasets("coco", data_dir="data/coco")
    image, target = train_set[0]   # float (3, H, W) in [0, 1]; target as torchvision's detection models take it
    loader = DataLoader(SeededAugmentation(train_set), batch_sampler=..., collate_fn=collate_detection)

COCO's category ids have gaps (1..90, 80 used; Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014):
labels are 1..K in the order of the sorted ids (0 is the background of torchvision's heads), and
dataset.label_to_category maps them back for results. As torchvision's detection reference does, crowd regions
are no training targets (COCOeval handles them) and training leaves out images with no usable box. Resizing and
normalization belong to the model (torchvision's GeneralizedRCNNTransform, min_size / max_size).
"""
import contextlib
import io
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from lib.errors import ConfigError

# How far (pixels) a box may stick out of its image and still be clamped rather than refused: COCO's own boxes
# overshoot by rounding fractions; more than this is a broken annotation.
OUTSIDE_TOLERANCE = 2.0
# torchvision's reference counts a box of width or height <= 1 as empty when it drops unannotated images.
MIN_USABLE_SIZE = 1.0
SPLITS = ("train", "val")


def coco_paths(data_dir: str, split: str) -> Tuple[str, str]:
    """(annotation file, image folder) of a COCO 2017 split in DIR/{train2017,val2017}, DIR/annotations."""
    return (os.path.join(data_dir, "annotations", f"instances_{split}2017.json"),
            os.path.join(data_dir, f"{split}2017"))


def read_coco_json(ann_file: str) -> COCO:
    """The file as pycocotools' COCO index, or one ConfigError line naming the file and what is wrong."""
    try:
        with open(ann_file) as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"annotation file not found: {ann_file}") from None
    except (OSError, ValueError) as error:
        raise ConfigError(f"annotation file {ann_file} is not readable JSON: {error}") from None
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(data.get(key), list)
               ] if isinstance(data, dict) else ["images", "annotations", "categories"]
    if missing:
        raise ConfigError(f"annotation file {ann_file} is not COCO format: no {', '.join(missing)} list")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        try:
            coco.createIndex()
        except (KeyError, TypeError) as error:
            raise ConfigError(f"annotation file {ann_file} is not COCO format: an entry lacks {error}") from None
    return coco


def decode_mask(segmentation, height: int, width: int) -> np.ndarray:
    """uint8 (H, W) mask of a polygon list, an uncompressed RLE (list counts) or a compressed RLE."""
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]  # three points at least
        if not polygons:
            return np.zeros((height, width), dtype=np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle)


class CocoDetection(Dataset):
    """Images and targets of a COCO-format json + image folder.

    train: leave out images without a usable (non-crowd, wider and taller than 1 px) box, and flip horizontally
    with probability hflip (drawn from torch's CPU generator, so SeededAugmentation makes it a function of the
    sample's seed). masks: decode instance masks (Mask R-CNN); off for Faster R-CNN. category_ids: the label
    order (sorted ids); a val set takes the train set's so both map alike. labels_as_ids: label = category id
    (no remapping; num_classes = largest id + 1), which is what torchvision's COCO detectors were trained with
    (91 classes for COCO's ids 1..90): fine-tuning their heads needs it, or their classes get scrambled.
    Raises ConfigError for a broken file, an annotation of an unknown image / category, or one outside its image.
    """

    def __init__(self, ann_file: str, image_dir: str, train: bool, hflip: float = 0.0, masks: bool = True,
                 category_ids: Optional[Sequence[int]] = None, labels_as_ids: bool = False):
        if not 0.0 <= hflip <= 1.0:
            raise ConfigError(f"hflip must be a probability in [0, 1], got {hflip!r}")
        self.ann_file, self.image_dir, self.train, self.hflip, self.masks = ann_file, image_dir, train, hflip, masks
        self.coco = read_coco_json(ann_file)
        own = sorted(self.coco.cats)
        self.category_ids = list(category_ids) if category_ids is not None else own
        unknown = sorted(set(own) - set(self.category_ids))
        if unknown:
            raise ConfigError(f"{ann_file}: categories {unknown} are not among the training categories")
        self.labels_as_ids = labels_as_ids
        if labels_as_ids and min(self.category_ids, default=1) < 1:
            raise ConfigError(f"{ann_file}: category id {min(self.category_ids)} cannot be a label (0 = background)")
        self.label_to_category = ({cat: cat for cat in self.category_ids} if labels_as_ids else
                                  {label: cat for label, cat in enumerate(self.category_ids, start=1)})
        self.category_to_label = {cat: label for label, cat in self.label_to_category.items()}
        self._check_annotations()
        ids = sorted(self.coco.imgs)
        self.ids = [i for i in ids if self._usable(i)] if train else ids

    @property
    def num_classes(self) -> int:
        """Classes of the detector's heads: the categories (or with labels_as_ids the largest id) + background."""
        return (max(self.category_ids, default=0) if self.labels_as_ids else len(self.category_ids)) + 1

    def _check_annotations(self) -> None:
        for ann in self.coco.dataset["annotations"]:
            where = f"{self.ann_file}: annotation {ann.get('id')}"
            image = self.coco.imgs.get(ann.get("image_id"))
            if image is None:
                raise ConfigError(f"{where} refers to image {ann.get('image_id')}, which the file does not list")
            if ann.get("category_id") not in self.category_to_label:
                raise ConfigError(f"{where} has unknown category {ann.get('category_id')}")
            box = ann.get("bbox")
            if not (isinstance(box, list) and len(box) == 4 and box[2] >= 0 and box[3] >= 0):
                raise ConfigError(f"{where} has no [x, y, w, h] box with w, h >= 0: {box}")
            x, y, w, h = box
            if (x < -OUTSIDE_TOLERANCE or y < -OUTSIDE_TOLERANCE or x + w > image["width"] + OUTSIDE_TOLERANCE
                    or y + h > image["height"] + OUTSIDE_TOLERANCE):
                raise ConfigError(f"{where}: box {box} lies outside its image {image['file_name']} "
                                  f"({image['width']} x {image['height']})")

    def _usable(self, image_id: int) -> bool:
        return any(not a.get("iscrowd", 0) and a["bbox"][2] > MIN_USABLE_SIZE and a["bbox"][3] > MIN_USABLE_SIZE
                   for a in self.coco.imgToAnns[image_id])

    def __len__(self) -> int:
        return len(self.ids)

    def aspect_ratios(self) -> List[float]:
        """width / height of every image, from the json (no image is opened): for aspect-ratio grouping."""
        return [self.coco.imgs[i]["width"] / self.coco.imgs[i]["height"] for i in self.ids]

    def _load_image(self, info: dict) -> torch.Tensor:
        path = os.path.join(self.image_dir, info["file_name"])
        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB"))
        except FileNotFoundError:
            raise ConfigError(f"image {path} of {self.ann_file} is missing") from None
        except OSError as error:
            raise ConfigError(f"image {path} is not readable: {error}") from None
        if array.shape[:2] != (info["height"], info["width"]):
            raise ConfigError(f"image {path} is {array.shape[1]} x {array.shape[0]}, its annotation file says "
                              f"{info['width']} x {info['height']}")
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)

    def target(self, image_id: int) -> Dict[str, torch.Tensor]:
        """torchvision's target dict: boxes (N, 4) xyxy float, labels int64, [masks uint8 (N, H, W)],
        image_id, area, iscrowd; crowd regions and boxes empty after clamping to the image are left out."""
        info = self.coco.imgs[image_id]
        height, width = info["height"], info["width"]
        anns = [a for a in self.coco.imgToAnns[image_id] if not a.get("iscrowd", 0)]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2].clamp_(0, width)
        boxes[:, 1::2].clamp_(0, height)
        keep = ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).tolist()
        anns = [a for a, k in zip(anns, keep) if k]
        target = {"boxes": boxes[torch.tensor(keep, dtype=torch.bool)],
                  "labels": torch.tensor([self.category_to_label[a["category_id"]] for a in anns], dtype=torch.int64),
                  "image_id": image_id,
                  "area": torch.tensor([float(a.get("area", 0.0)) for a in anns], dtype=torch.float32),
                  "iscrowd": torch.zeros(len(anns), dtype=torch.int64)}
        if self.masks:
            masks = [decode_mask(a["segmentation"], height, width) for a in anns if "segmentation" in a]
            if len(masks) != len(anns):
                raise ConfigError(f"{self.ann_file}: image {image_id} has annotations without segmentation "
                                  "(needed for masks; use a box-only model)")
            target["masks"] = torch.from_numpy(np.stack(masks) if masks else np.zeros((0, height, width), np.uint8))
        return target

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        image = self._load_image(self.coco.imgs[image_id])
        target = self.target(image_id)
        if self.train and self.hflip > 0 and torch.rand(()).item() < self.hflip:
            image = image.flip(-1)
            width = image.shape[-1]
            target["boxes"] = torch.stack([width - target["boxes"][:, 2], target["boxes"][:, 1],
                                           width - target["boxes"][:, 0], target["boxes"][:, 3]], dim=1)
            if "masks" in target:
                target["masks"] = target["masks"].flip(-1)
        return image, target


def collate_detection(batch):
    """(list of images, list of targets): torchvision's detection models take lists, images of any sizes."""
    return tuple(list(items) for items in zip(*batch))


def build_detection_datasets(name: str, data_dir: Optional[str] = None, train_ann: Optional[str] = None,
                             train_images: Optional[str] = None, val_ann: Optional[str] = None,
                             val_images: Optional[str] = None, hflip: float = 0.5, masks: bool = True,
                             fake_images: int = 8, labels_as_ids: bool = False
                             ) -> Tuple[CocoDetection, CocoDetection, int]:
    """(train_set, val_set, num_classes) of "coco" (COCO 2017 under data_dir), "cocoformat" (train_ann /
    train_images / val_ann / val_images) or "fake" (a tiny generated set written into data_dir, see
    lib.data.fake_coco). num_classes counts the background. The val set uses the train set's label order.
    labels_as_ids: labels are the category ids themselves (to fine-tune torchvision's COCO heads: coco gives 91)."""
    if name == "coco":
        if not data_dir:
            raise ConfigError("dataset coco needs a data directory (DIR/annotations, DIR/train2017, DIR/val2017)")
        (train_ann, train_images), (val_ann, val_images) = (coco_paths(data_dir, s) for s in SPLITS)
    elif name == "fake":
        from lib.data.fake_coco import write_fake_coco
        if not data_dir:
            raise ConfigError("dataset fake needs a directory to write its generated images into")
        (train_ann, train_images), (val_ann, val_images) = (
            write_fake_coco(os.path.join(data_dir, f"fake_coco_{s}"), fake_images, seed=i) for i, s in
            enumerate(SPLITS))
    elif name == "cocoformat":
        given = dict(train_ann=train_ann, train_images=train_images, val_ann=val_ann, val_images=val_images)
        if not all(given.values()):
            missing = [k.replace("_", "-") for k, v in given.items() if not v]
            raise ConfigError(f"dataset cocoformat needs --{', --'.join(missing)}")
    else:
        raise ConfigError(f"unknown detection dataset {name!r}; valid: coco, cocoformat, fake")
    train_set = CocoDetection(train_ann, train_images, train=True, hflip=hflip, masks=masks,
                              labels_as_ids=labels_as_ids)
    val_set = CocoDetection(val_ann, val_images, train=False, masks=masks, category_ids=train_set.category_ids,
                            labels_as_ids=labels_as_ids)
    return train_set, val_set, train_set.num_classes
