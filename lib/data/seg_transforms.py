"""The segmentation data pipeline of the authors' mmsegmentation Cityscapes config, in numpy / OpenCV.

Training (in this order, as the config): resize to img_scale x a ratio drawn from ratio_range, keeping the aspect
ratio; a random crop in which no class covers cat_max_ratio or more of the labelled pixels (up to 10 tries);
horizontal flip; photometric distortion (mmseg's PhotoMetricDistortion); ImageNet mean / std; padding to the crop
size (image 0, label 255). Validation: resize to img_scale keeping the aspect ratio; the label stays at full size.

Images are uint8 BGR (H, W, 3) as OpenCV reads them (mmseg works in BGR too and converts to RGB when
normalizing); labels uint8 (H, W) train ids with 255 = ignore. Every random draw comes from the numpy Generator
passed in, so a sample is a function of its seed alone. See docs/segmentation.md.
"""
from dataclasses import dataclass
from typing import Tuple

import cv2
import numpy as np
import torch

IGNORE_INDEX = 255
# ImageNet statistics on the 0-255 scale, RGB order (mmseg's img_norm_cfg).
MEAN_RGB = np.array([123.675, 116.28, 103.53], dtype=np.float32)
STD_RGB = np.array([58.395, 57.12, 57.375], dtype=np.float32)
CROP_TRIES = 10


@dataclass(frozen=True)
class SegPipeline:
    """Geometry and augmentation settings; sizes are (H, W) except img_scale, which is mmseg's (long, short)."""
    img_scale: Tuple[int, int] = (2048, 1024)
    crop_size: Tuple[int, int] = (512, 1024)
    ratio_range: Tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    hflip: float = 0.5
    photometric: bool = True


def rescale_size(height, width, scale):
    """(new_h, new_w): the largest size fitting in scale = (long, short) keeping the aspect (mmcv.rescale_size)."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def resize(image, label, size):
    """Image bilinear, label nearest (labels are ids, never interpolated). size = (H, W)."""
    h, w = size
    image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    if label is not None:
        label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)
    return image, label


def random_resize(image, label, pipeline, rng):
    ratio = rng.uniform(*pipeline.ratio_range)
    scale = (int(pipeline.img_scale[0] * ratio), int(pipeline.img_scale[1] * ratio))
    return resize(image, label, rescale_size(image.shape[0], image.shape[1], scale))


def _crop_box(shape, crop_size, rng):
    margin_h, margin_w = max(shape[0] - crop_size[0], 0), max(shape[1] - crop_size[1], 0)
    top, left = int(rng.integers(0, margin_h + 1)), int(rng.integers(0, margin_w + 1))
    return top, min(top + crop_size[0], shape[0]), left, min(left + crop_size[1], shape[1])


def largest_class_ratio(label):
    """Fraction of the labelled (non-255) pixels taken by the most frequent class; 1.0 with fewer than 2 classes
    present (mmseg's RandomCrop only accepts a crop with at least two classes)."""
    ids, counts = np.unique(label, return_counts=True)
    counts = counts[ids != IGNORE_INDEX]
    if len(counts) < 2:
        return 1.0
    return float(counts.max() / counts.sum())


def random_crop(image, label, crop_size, cat_max_ratio, rng):
    """A crop_size crop (smaller where the image is smaller) whose largest class covers < cat_max_ratio of its
    labelled pixels: the first such of up to 10 random crops, as mmseg's RandomCrop. If none of the 10 qualifies,
    the one with the smallest largest-class ratio (mmseg would take an 11th, untested draw)."""
    box = _crop_box(label.shape, crop_size, rng)
    if cat_max_ratio < 1.0:
        best, best_ratio = box, 2.0
        for _ in range(CROP_TRIES):
            ratio = largest_class_ratio(label[box[0]:box[1], box[2]:box[3]])
            if ratio < cat_max_ratio:
                best = box
                break
            if ratio < best_ratio:
                best, best_ratio = box, ratio
            box = _crop_box(label.shape, crop_size, rng)
        box = best
    top, bottom, left, right = box
    return image[top:bottom, left:right], label[top:bottom, left:right]


def _convert(values, alpha=1.0, beta=0.0):
    return np.clip(values.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photometric_distortion(image, rng, brightness_delta=32, contrast_range=(0.5, 1.5),
                           saturation_range=(0.5, 1.5), hue_delta=18):
    """mmseg's PhotoMetricDistortion on a uint8 BGR image: each of brightness, contrast, saturation and hue is
    applied with probability 1/2, contrast either first or last (probability 1/2 each)."""
    def contrast(img):
        return _convert(img, alpha=rng.uniform(*contrast_range)) if rng.integers(2) else img

    if rng.integers(2):
        image = _convert(image, beta=rng.uniform(-brightness_delta, brightness_delta))
    contrast_first = rng.integers(2) == 1
    if contrast_first:
        image = contrast(image)
    if rng.integers(2):
        hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
        hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(*saturation_range))
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if rng.integers(2):
        hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
        # OpenCV's 8-bit hue runs over [0, 180).
        hsv[..., 0] = ((hsv[..., 0].astype(np.int64) + int(rng.integers(-hue_delta, hue_delta))) % 180).astype(np.uint8)
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if not contrast_first:
        image = contrast(image)
    return image


def normalize(image):
    """uint8 BGR (H, W, 3) -> float32 RGB (3, H, W) with the ImageNet mean / std."""
    rgb = image[..., ::-1].astype(np.float32)
    return np.ascontiguousarray(((rgb - MEAN_RGB) / STD_RGB).transpose(2, 0, 1))


def pad_to(image, label, size):
    """Pad (3, h, w) / (h, w) at the bottom and right to size (H, W): image with 0, label with 255."""
    h, w = label.shape
    pad_h, pad_w = max(size[0] - h, 0), max(size[1] - w, 0)
    if pad_h or pad_w:
        image = np.pad(image, ((0, 0), (0, pad_h), (0, pad_w)), constant_values=0)
        label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=IGNORE_INDEX)
    return image, label


def train_transform(image, label, pipeline, rng):
    """One training sample: (image float32 (3, crop_h, crop_w), label int64 (crop_h, crop_w)) tensors."""
    image, label = random_resize(image, label, pipeline, rng)
    image, label = random_crop(image, label, pipeline.crop_size, pipeline.cat_max_ratio, rng)
    if rng.random() < pipeline.hflip:
        image, label = image[:, ::-1], label[:, ::-1]
    if pipeline.photometric:
        image = photometric_distortion(np.ascontiguousarray(image), rng)
    image, label = pad_to(normalize(image), np.ascontiguousarray(label), pipeline.crop_size)
    return torch.from_numpy(image), torch.from_numpy(label.astype(np.int64))


def val_transform(image, label, pipeline):
    """Whole image resized to img_scale keeping the aspect; the label keeps the original resolution."""
    image, _ = resize(image, None, rescale_size(image.shape[0], image.shape[1], pipeline.img_scale))
    return torch.from_numpy(normalize(image)), torch.from_numpy(label.astype(np.int64))
