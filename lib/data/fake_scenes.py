"""Synthetic street scenes in memory, for segmentation smoke runs without data (`--dataset fake`).

Each scene has sky, building and road bands of random heights, a sidewalk strip, a few rectangles of other classes
(car, person, pole, ...) and a small ignored (255) patch, like Cityscapes' ego vehicle. Every class has its own
color plus noise, so a network can learn the scenes. Scene i of a split is generated from seed (split, i):
identical in every process, and the global RNG is never touched.
"""
import numpy as np

from lib.data.seg_transforms import IGNORE_INDEX

SIZE = (128, 256)  # (H, W): the Cityscapes aspect ratio
OBJECT_CLASSES = (3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17, 18)
_SPLITS = {"train": 0, "val": 1}
SPLIT_SIZES = {"train": 16, "val": 8}  # scenes per split of `--dataset fake`


def make_scene(seed, size=SIZE, num_classes=19):
    """(uint8 BGR image (H, W, 3), uint8 label (H, W)) of one scene."""
    rng = np.random.default_rng(seed)
    h, w = size
    label = np.zeros((h, w), dtype=np.uint8)  # road
    sky, horizon = int(h * rng.uniform(0.1, 0.3)), int(h * rng.uniform(0.45, 0.6))
    label[:sky] = 10  # sky
    label[sky:horizon] = 2  # building
    side = int(w * rng.uniform(0.1, 0.25))
    label[horizon:, :side] = 1  # sidewalk
    for _ in range(int(rng.integers(3, 7))):
        cls = int(rng.choice(OBJECT_CLASSES)) % num_classes
        rh, rw = int(rng.integers(h // 10, h // 3)), int(rng.integers(w // 16, w // 4))
        top, left = int(rng.integers(sky, h - rh)), int(rng.integers(0, w - rw))
        label[top:top + rh, left:left + rw] = cls
    label[h - h // 10:, w // 3: 2 * w // 3] = IGNORE_INDEX  # the "ego vehicle"
    palette = np.random.default_rng(1234).integers(30, 226, size=(256, 3))
    noise = rng.integers(-25, 26, size=(h, w, 3))
    image = np.clip(palette[label] + noise, 0, 255).astype(np.uint8)
    return image, label


class FakeScenes:
    """`count` scenes of one split, generated once and kept in memory (a few hundred KB)."""

    def __init__(self, count, split="train", size=SIZE):
        self.scenes = [make_scene([_SPLITS[split], i], size) for i in range(count)]

    def __len__(self):
        return len(self.scenes)

    def load(self, index):
        image, label = self.scenes[index]
        return image.copy(), label.copy()
