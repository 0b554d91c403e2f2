"""Cityscapes fine annotations, read in torchvision.datasets.Cityscapes' layout (docs/segmentation.md):

    <root>/leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png
    <root>/gtFine/{train,val}/<city>/<name>_gtFine_labelIds.png

with <root> = <data_dir>/cityscapes if that folder exists, else <data_dir>. The labelIds are mapped to the 19
train ids of the official cityscapesScripts table (every other id -> 255, ignored). Also `fake`: synthetic street
scenes generated in memory, for smoke runs without data.
"""
import glob
import os

import cv2
import numpy as np
from torch.utils.data import Dataset

from lib.data.seg_transforms import IGNORE_INDEX, SegPipeline, train_transform, val_transform
from lib.errors import ConfigError

CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
           "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
# cityscapesScripts labels.py: labelId -> trainId for the 19 evaluated classes.
LABEL_TO_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                     26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
DOWNLOAD_HINT = ("download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from "
                 "https://www.cityscapes-dataset.com/downloads/ and unzip both into {root}, so that "
                 "{root}/leftImg8bit/train and {root}/gtFine/train exist")
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


def label_lookup_table():
    """uint8 table of 256 entries: labelId -> train id (255 for ids that are not evaluated)."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in LABEL_TO_TRAIN_ID.items():
        table[label_id] = train_id
    return table


class SegmentationSet(Dataset):
    """Samples of a source (load(i) -> (uint8 BGR image, uint8 train-id label)) through the training or the
    validation pipeline.

    Training items are asked for as (index, seed) (lib/data/iteration_sampler.py): every random draw of the sample
    comes from numpy's Generator seeded with `seed`. Validation items are plain indices.
    """

    def __init__(self, source, train, pipeline: SegPipeline):
        self.source = source
        self.train = train
        self.pipeline = pipeline

    def __len__(self):
        return len(self.source)

    def __getitem__(self, key):
        if self.train:
            index, seed = key if isinstance(key, tuple) else (key, key)
            image, label = self.source.load(index)
            return train_transform(image, label, self.pipeline, np.random.default_rng(seed))
        image, label = self.source.load(key)
        return val_transform(image, label, self.pipeline)


class CityscapesFiles:
    """The (image, labelIds) file pairs of one split; load(i) reads them and maps the label to train ids."""

    def __init__(self, root, split):
        self.root, self.split = root, split
        image_dir = os.path.join(root, "leftImg8bit", split)
        label_dir = os.path.join(root, "gtFine", split)
        hint = DOWNLOAD_HINT.format(root=root)
        for folder in (image_dir, label_dir):
            if not os.path.isdir(folder):
                raise ConfigError(f"Cityscapes not found: {folder} does not exist; {hint}")
        images = sorted(glob.glob(os.path.join(image_dir, "*", "*" + IMAGE_SUFFIX)))
        if not images:
            raise ConfigError(f"Cityscapes incomplete: no *{IMAGE_SUFFIX} images in {image_dir}/<city>/; {hint}")
        self.samples = []
        for image in images:
            city = os.path.basename(os.path.dirname(image))
            name = os.path.basename(image)[:-len(IMAGE_SUFFIX)]
            label = os.path.join(label_dir, city, name + LABEL_SUFFIX)
            if not os.path.isfile(label):
                raise ConfigError(f"Cityscapes incomplete: {label} is missing (the labels of {image}); {hint}")
            self.samples.append((image, label))
        self.table = label_lookup_table()

    def __len__(self):
        return len(self.samples)

    def load(self, index):
        image_path, label_path = self.samples[index]
        image = cv2.imread(image_path, cv2.IMREAD_COLOR)
        label_ids = cv2.imread(label_path, cv2.IMREAD_UNCHANGED)
        if image is None or label_ids is None:
            raise ConfigError(f"cannot read {image_path if image is None else label_path}: damaged file")
        if label_ids.ndim != 2 or label_ids.shape != image.shape[:2]:
            raise ConfigError(f"{label_path} is not a single-channel label map of the size of its image")
        return image, self.table[label_ids]


def cityscapes_root(data_dir):
    nested = os.path.join(data_dir, "cityscapes")
    return nested if os.path.isdir(nested) else data_dir


def build_cityscapes(data_dir, pipeline: SegPipeline, train=True):
    """(train_set, val_set) of Cityscapes under data_dir (train=False: (None, val_set), the train split is not
    read); a missing or incomplete dataset is a ConfigError."""
    root = cityscapes_root(data_dir)
    if not os.path.isdir(root):
        raise ConfigError(f"Cityscapes not found: {root} does not exist; {DOWNLOAD_HINT.format(root=root)}")
    return (SegmentationSet(CityscapesFiles(root, "train"), True, pipeline) if train else None,
            SegmentationSet(CityscapesFiles(root, "val"), False, pipeline))
