"""A tiny synthetic COCO-format set for smoke runs without data (`--dataset fake`).

Each image has a noisy background and a few filled rectangles and triangles, colored by category, annotated
with polygons; category ids 1, 3 and 7 have gaps, as COCO's do, and every other image carries one crowd region
stored as RLE. Image i is generated from (seed, i): every process writes the same bytes, each file atomically.
"""
import json
import os
from typing import Tuple

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

CATEGORIES = {1: ("box", (220, 40, 40)), 3: ("triangle", (40, 200, 40)), 7: ("bar", (40, 40, 220))}
SIZES = ((64, 96), (96, 64), (80, 80))  # (H, W): several aspect ratios for the grouped sampler


def _shape(rng, cat: int, height: int, width: int):
    """(polygon [x0, y0, x1, y1, ...], bbox [x, y, w, h]) of one object of category cat."""
    w, h = int(rng.integers(12, width // 2)), int(rng.integers(12, height // 2))
    if cat == 7:
        h = max(6, h // 3)
    x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
    if cat == 3:
        polygon = [x, y + h, x + w / 2, y, x + w, y + h]
    else:
        polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
    return [float(v) for v in polygon], [float(x), float(y), float(w), float(h)]


def _write_atomic(path: str, write) -> None:
    temporary = f"{path}.{os.getpid()}.tmp"
    write(temporary)
    os.replace(temporary, path)


def write_fake_coco(root: str, num_images: int = 8, seed: int = 0) -> Tuple[str, str]:
    """Write num_images images to root/images and root/annotations.json; returns (annotation file, image dir)."""
    image_dir = os.path.join(root, "images")
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng([seed, index])
        height, width = SIZES[index % len(SIZES)]
        pixels = rng.integers(0, 60, size=(height, width, 3)).astype(np.uint8)
        image_id = 100 + index  # not 0-based either, so nothing may confuse ids with indices
        for _ in range(int(rng.integers(1, 4))):
            cat = int(rng.choice(list(CATEGORIES)))
            polygon, box = _shape(rng, cat, height, width)
            mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([polygon], height, width)))
            pixels[mask.astype(bool)] = CATEGORIES[cat][1]
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id, category_id=cat, bbox=box,
                                    area=float(mask.sum()), iscrowd=0, segmentation=[polygon]))
        if index % 2:
            crowd = np.zeros((height, width), dtype=np.uint8, order="F")
            crowd[: height // 4, : width // 4] = 1
            rle = mask_utils.encode(crowd)
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id, category_id=1,
                                    bbox=[0.0, 0.0, float(width // 4), float(height // 4)], area=float(crowd.sum()),
                                    iscrowd=1, segmentation=dict(size=rle["size"], counts=rle["counts"].decode())))
        name = f"{image_id:06d}.png"
        _write_atomic(os.path.join(image_dir, name), lambda p: Image.fromarray(pixels).save(p, format="PNG"))
        images.append(dict(id=image_id, file_name=name, height=height, width=width))
    data = dict(images=images, annotations=annotations,
                categories=[dict(id=cat, name=name) for cat, (name, _) in CATEGORIES.items()])
    ann_file = os.path.join(root, "annotations.json")
    def write_json(path):
        with open(path, "w") as handle:
            json.dump(data, handle)

    _write_atomic(ann_file, write_json)
    return ann_file, image_dir
