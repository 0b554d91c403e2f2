#!/usr/bin/env python3
"""Attention maps of a trained model, as Figure 2 of the SNL paper: where does one position look?

    python tools/attention_maps.py save_model/cifar10/20/snl/model_best.pth.tar bird.png --display-size 256
    python tools/attention_maps.py CHECKPOINT --indices 0 1 2 --data_dir ./data      # validation images
    python tools/attention_maps.py CHECKPOINT img.jpg --queries 0.3,0.4 0.7,0.6 --block layer3.6
    python tools/attention_maps.py save_model/cityscapes/resnet50/snl/model_best.pth.tar street.png  # head block

For each image, one PNG grid: the input, then one panel per query position. A panel is the query's row of the
block's attention matrix A (rows = queries; for the stage-based blocks A is the stage's affinity, for criss-cross
attention the softmax weights over the query's row and column) reshaped to the block's (H, W), resized to the
image (bilinear), colored (jet: blue = 0, red = the row's largest weight) and blended onto the image; the white
square is the query's cell. Queries are fractional coordinates x,y (x across, y down, in [0, 1]). Image files
are shown whole, at their aspect ratio: their shorter side is resized to the network input size (no crop);
validation images (--indices) are shown as the network sees them. The PNGs go to the checkpoint's run folder
(attention_maps/<checkpoint name>/) unless --output-dir says otherwise. CGNL has no per-position map (its kernel
is global), so it is refused. The reference's checkpoints need the model flags.
"""
import argparse
import os
import sys

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib.errors import ConfigError  # noqa: E402
from tools._checkpoint import (OneLineParser, add_input_args, attention_matrix, block_kind,  # noqa: E402
                               check_writable_folder, checkpoint_stem, inputs_per_image, load_images, load_model,
                               nonlocal_blocks, parse_error_exit, run_folder)

DEFAULT_QUERIES = ((0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75))
GAP = 4  # white pixels between panels


def parse_query(text):
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--queries takes x,y pairs such as 0.25,0.75, got {text!r}") from None
    if not (0 <= x <= 1 and 0 <= y <= 1):
        raise ConfigError(f"query {text} is outside the image: x and y must lie in [0, 1]")
    return x, y


def query_cell(query, height, width):
    """(row, column) of the block's (height, width) grid cell holding the fractional point query = (x, y)."""
    x, y = query
    return min(int(y * height), height - 1), min(int(x * width), width - 1)


def choose_block(model, name):
    """(name, module) of the block to draw: --block, else the model's first block (a note lists the others)."""
    blocks = nonlocal_blocks(model)
    if not blocks:
        raise ConfigError("the checkpoint's model has no nonlocal block: nothing to draw")
    names = [n for n, _ in blocks]
    if name is None:
        name = names[0]
        if len(names) > 1:
            print(f"note: drawing block {name}; the model has {len(names)}: {', '.join(names)} (choose with --block)")
    elif name not in names:
        raise ConfigError(f"no nonlocal block named {name!r}; the model has: {', '.join(names)}")
    module = dict(blocks)[name]
    if block_kind(module) == "cgnl":
        raise ConfigError(f"block {name} is CGNL: its Taylor-expanded kernel aggregates the whole image at once, "
                          f"so it has no per-position attention map")
    return name, module


def heat_map(row, height, width, out_height, out_width):
    """A row of A (N,) -> jet-colored uint8 BGR (out_height, out_width, 3); the row's largest weight is red, 0
    blue."""
    grid = np.asarray(row, dtype=np.float64).reshape(height, width)
    low = min(grid.min(), 0.0)
    span = grid.max() - low
    scaled = (grid - low) / span if span > 0 else np.zeros_like(grid)
    resized = cv2.resize(scaled.astype(np.float32), (out_width, out_height), interpolation=cv2.INTER_LINEAR)
    return cv2.applyColorMap(np.clip(resized * 255 + 0.5, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)


def panel(image, row, cell, height, width, alpha):
    """The heat map of one query blended onto image (h, w, 3), with the query's cell as a white square."""
    out_height, out_width = image.shape[:2]
    blended = cv2.addWeighted(image, 1 - alpha, heat_map(row, height, width, out_height, out_width), alpha, 0)
    r, c = cell
    top, left = int(r * out_height / height), int(c * out_width / width)
    bottom, right = int((r + 1) * out_height / height) - 1, int((c + 1) * out_width / width) - 1
    pad = max(0, (6 - (right - left)) // 2)  # at least ~6 px wide, so that it stays visible on fine grids
    cv2.rectangle(blended, (left - pad, top - pad), (right + pad, bottom + pad), (255, 255, 255), thickness=2)
    return blended


def grid_image(display, rows, cells, height, width, alpha):
    """[input | one panel per query], separated by GAP white columns."""
    panels = [display] + [panel(display, row, cell, height, width, alpha) for row, cell in zip(rows, cells)]
    gap = np.full((display.shape[0], GAP, 3), 255, dtype=np.uint8)
    parts = [panels[0]]
    for p in panels[1:]:
        parts += [gap, p]
    return np.concatenate(parts, axis=1)


def get_parser():
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_args(parser)
    parser.add_argument("--block", help="module name of the block to draw (default: the first; the names are "
                        "printed when the model has several, e.g. layer1.2 or layer3.6)")
    parser.add_argument("--queries", nargs="+", metavar="X,Y", help="query positions as fractions x,y "
                        "(default: 4 spread over the image, at 0.25 and 0.75)")
    parser.add_argument("--display-size", "--display_size", dest="display_size", type=int, default=256,
                        help="height of each panel in pixels; the width follows the image's aspect ratio "
                        "(default 256; CIFAR's 32 px are upscaled)")
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the heat map in the blend "
                        "(default 0.5)")
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", default=None,
                        help="folder for the PNGs, one per image: <image>_<block>.png (default: "
                        "attention_maps/<checkpoint name>/ in the checkpoint's run folder)")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    try:
        return run(args)
    except ConfigError as error:
        return parse_error_exit("attention_maps.py", error)


def default_output_dir(checkpoint):
    return os.path.join(run_folder(checkpoint), "attention_maps", checkpoint_stem(checkpoint))


def run(args):
    queries = [parse_query(q) for q in args.queries] if args.queries else list(DEFAULT_QUERIES)
    if args.display_size < 8 or not 0 <= args.alpha <= 1:
        raise ConfigError("--display-size must be at least 8 and --alpha in [0, 1]")
    output_dir = args.output_dir or default_output_dir(args.checkpoint)
    check_writable_folder("--output-dir", output_dir)
    loaded = load_model(args)
    name, block = choose_block(loaded.model, args.block)
    images = load_images(args, loaded, keep_aspect=True)
    for (image_name, _, display), inputs in zip(images, inputs_per_image(loaded, [(name, block)], images)):
        x = inputs[name]  # (1, C, H, W)
        height, width = x.shape[2:]
        att = attention_matrix(block, x).float().cpu().numpy()[0]  # (N, N)
        cells = [query_cell(q, height, width) for q in queries]
        shown_width = max(1, round(args.display_size * display.shape[1] / display.shape[0]))
        display = cv2.resize(display, (shown_width, args.display_size), interpolation=cv2.INTER_LINEAR)
        picture = grid_image(display, [att[r * width + c] for r, c in cells], cells, height, width, args.alpha)
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, f"{image_name}_{name}.png")
        if not cv2.imwrite(path, picture, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
            raise ConfigError(f"cannot write {path}")
        print(f"wrote {path} (block {name}: {height}x{width} positions, queries "
              f"{' '.join(f'{x:g},{y:g}' for x, y in queries)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
