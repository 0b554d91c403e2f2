#!/usr/bin/env python3
"""A small image dataset of shapes in scenes, generated offline, in the imagefolder layout (docs/classification.md,
"Data").

    python tools/synthetic_shapes.py data/shapes --train 200 --val 50 --size 32
    python train_val.py --dataset imagefolder --data_dir data/shapes --input-size 32 ...

Each image is a scene: a sky gradient, a textured ground band at a random height, and one object (disc, square,
triangle or ring) of a random color, size and position, with soft edges and sensor noise. The class is the shape.
Deterministic for a given --seed. Used for the example pictures of docs/visualization.md, where CIFAR cannot be
downloaded; any imagefolder data works the same way.
"""
import argparse
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("disc", "square", "triangle", "ring")
SUPERSAMPLE = 4  # draw at 4x and downscale: antialiased edges


def scene(rng, shape, size):
    big = size * SUPERSAMPLE
    yy = np.linspace(0, 1, big)[:, None, None]
    sky_top, sky_bottom = rng.uniform(90, 200, 3), rng.uniform(150, 255, 3)
    image = np.broadcast_to(sky_top + (sky_bottom - sky_top) * yy, (big, big, 3)).copy()
    horizon = int(big * rng.uniform(0.55, 0.8))
    ground = rng.uniform(40, 140, 3)
    texture = rng.normal(0, 12, (big - horizon, big, 1))
    image[horizon:] = ground + texture
    canvas = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    radius = big * rng.uniform(0.14, 0.26)
    cx, cy = big * rng.uniform(0.3, 0.7), big * rng.uniform(0.3, 0.7)
    color = tuple(int(v) for v in rng.integers(0, 256, 3))
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "disc":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    elif shape == "triangle":
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=color)
    else:
        draw.ellipse(box, outline=color, width=max(2, int(radius * 0.35)))
    canvas = canvas.filter(ImageFilter.GaussianBlur(SUPERSAMPLE * 0.3)).resize((size, size), Image.BILINEAR)
    noisy = np.asarray(canvas, dtype=np.float64) + rng.normal(0, 4, (size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="dataset folder to create (train/<class>/*.png, val/<class>/*.png)")
    parser.add_argument("--train", type=int, default=200, help="training images per class (default 200)")
    parser.add_argument("--val", type=int, default=50, help="validation images per class (default 50)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if os.path.exists(os.path.join(args.output, "train")):
        parser.exit(2, f"synthetic_shapes.py: error: {args.output}/train exists: choose a new folder\n")
    rng = np.random.default_rng(args.seed)
    for split, count in (("train", args.train), ("val", args.val)):
        for shape in CLASSES:
            folder = os.path.join(args.output, split, shape)
            os.makedirs(folder, exist_ok=True)
            for k in range(count):
                scene(rng, shape, args.size).save(os.path.join(folder, f"{k:04d}.png"))
    print(f"wrote {len(CLASSES) * (args.train + args.val)} images of {len(CLASSES)} classes to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
