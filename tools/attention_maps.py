#!/usr/bin/env python3
"""Attention maps of a trained model, as Figure 2 of the SNL paper: where does one position look?

    python tools/attention_maps.py save_model/cifar10/20/snl/model_best.pth.tar bird.png --display-size 256
    python tools/attention_maps.py CHECKPOINT --indices 0 1 2 --data_dir ./data      # validation images
    python tools/attention_maps.py CHECKPOINT img.jpg --queries 0.3,0.4 0.7,0.6 --block layer3.6
    python tools/attention_maps.py save_model/cityscapes/resnet50/snl/model_best.pth.tar street.png  # head block
    python tools/attention_maps.py save_model/ucf101/resnet3d50/snl/model_best.pth.tar v_Basketball_g01_c01.avi
    python tools/attention_maps.py VIDEO_CHECKPOINT --indices 0 --queries 0.5,0.5,0 0.5,0.5,1  # first, last step
    python tools/attention_maps.py REID_CHECKPOINT 0001_c1s1_001051_00.jpg --queries 0.5,0.3   # a person crop
    python tools/attention_maps.py DET_CHECKPOINT street.jpg --queries 0.5,0.6 --block backbone.body.layer3.5

For each image, one PNG grid: the input, then one panel per query position. A panel is the query's row of the
block's attention matrix A (rows = queries; for the stage-based blocks A is the stage's affinity, for criss-cross
attention the softmax weights over the query's row and column) reshaped to the block's (H, W), resized to the
image (bilinear), colored (jet: blue = 0, red = the row's largest weight) and blended onto the image; the white
square is the query's cell. Queries are fractional coordinates x,y (x across, y down, in [0, 1]). Image files
are shown whole, at their aspect ratio: their shorter side is resized to the network input size (no crop);
validation images (--indices) are shown as the network sees them. The PNGs go to the checkpoint's run folder
(attention_maps/<checkpoint name>/) unless --output-dir says otherwise. CGNL has no per-position map (its kernel
is global), so it is refused. The reference's checkpoints need the model flags.

Re-ID checkpoints (train_reid.py): each image file is resized to the run's --img-size and normalized as its
test images (a video re-ID model sees it as a clip of one frame), so the panels show where a position of the
person attends within the crop; the default block is the first (AGW's 5: layer2's), --block picks another.
Detection checkpoints (train_det.py): the backbone block (backbone.body.layer3.N ...) for image files as the
detector sees them: its transform resizes the image (min_size / max_size) and pads it to a multiple of 32 at the
bottom and right; a query x,y is a point of the image, mapped through that resize to the block's grid cell over
the padded canvas, and the panels show the image (resized, no padding) with the part of the map over it.

Video checkpoints (train_video.py): the input is the validation clip of each video file or frame folder (or
validation video, --indices): the centre clip with the run's clip length and frame step, the centred square
resized to its frame size, its normalization. The space-time block's A is (N, N) with N = T H W. For each query,
one row of the grid: one panel per time step t of the block (T columns), the query's attention over that step's
H x W positions blended onto the input frame at the centre of the frames that step covers; all panels of a row
share one colour scale (red = the row's largest weight over the whole clip), so they show which frames the query
attends to. The white square marks the query in its own step. Queries are x,y,t fractions (t: time in the clip,
default 0.5: the middle step).
"""
import os
import sys

import cv2
import numpy as np

import tools  # noqa: F401  (python tools/x.py: puts the repository root on sys.path, tools/tools.py)
from lib.errors import ConfigError
from tools._attention import attention_matrix, block_kind, capture_inputs, inputs_per_image, nonlocal_blocks
from tools._inputs import load_images
from tools._loaded_model import checkpoint_tool_parser, load_model
from tools._outputs import check_writable_folder, checkpoint_stem, main_reporting_errors, run_folder, write_image

DEFAULT_QUERIES = ((0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75))
GAP = 4  # white pixels between panels


def parse_query(text):
    """(x, y) or (x, y, t) fractions from 'x,y' or 'x,y,t' (t: video checkpoints only)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) not in (2, 3):
        raise ConfigError(f"--queries takes x,y pairs such as 0.25,0.75 (x,y,t for a video checkpoint), got "
                          f"{text!r}")
    if not all(0 <= v <= 1 for v in values):
        raise ConfigError(f"query {text} is outside the image: x, y (and t) must lie in [0, 1]")
    return values


def query_cell(query, height, width):
    """(row, column) of the block's (height, width) grid cell holding the fractional point query = (x, y)."""
    x, y = query[:2]
    return min(int(y * height), height - 1), min(int(x * width), width - 1)


def query_step(query, steps):
    """The block's time step holding the query's t (default 0.5: the middle step)."""
    t = query[2] if len(query) > 2 else 0.5
    return min(int(t * steps), steps - 1)


def step_frame(step, steps, clip_len):
    """The input frame shown under the block's time step `step` of `steps`: the centre of the clip_len / steps
    frames it covers (the frame itself when the block keeps the clip's length)."""
    return min(clip_len - 1, int((step + 0.5) * clip_len / steps))


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
        raise ConfigError(f"block {name} is CGNL: its Taylor-expanded kernel aggregates the whole input at once, "
                          f"so it has no per-position attention map")
    return name, module


def heat_map(row, height, width, out_height, out_width, scale=None):
    """A row of A (N,) -> jet-colored uint8 BGR (out_height, out_width, 3); the row's largest weight is red, 0
    blue. scale = (low, high): a colour scale shared with other panels instead (a video query's frames)."""
    grid = np.asarray(row, dtype=np.float64).reshape(height, width)
    low, high = scale if scale is not None else (min(grid.min(), 0.0), grid.max())
    span = high - low
    scaled = (grid - low) / span if span > 0 else np.zeros_like(grid)
    resized = cv2.resize(scaled.astype(np.float32), (out_width, out_height), interpolation=cv2.INTER_LINEAR)
    return cv2.applyColorMap(np.clip(resized * 255 + 0.5, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)


def panel(image, row, cell, height, width, alpha, scale=None):
    """The heat map of one query blended onto image (h, w, 3), with the query's cell as a white square (none
    when cell is None: a video query's other frames)."""
    out_height, out_width = image.shape[:2]
    heat = heat_map(row, height, width, out_height, out_width, scale)
    blended = cv2.addWeighted(image, 1 - alpha, heat, alpha, 0)
    if cell is None:
        return blended
    r, c = cell
    top, left = int(r * out_height / height), int(c * out_width / width)
    bottom, right = int((r + 1) * out_height / height) - 1, int((c + 1) * out_width / width) - 1
    pad = max(0, (6 - (right - left)) // 2)  # at least ~6 px wide, so that it stays visible on fine grids
    cv2.rectangle(blended, (left - pad, top - pad), (right + pad, bottom + pad), (255, 255, 255), thickness=2)
    return blended


def grid_image(display, rows, cells, height, width, alpha):
    """[input | one panel per query], separated by GAP white columns."""
    return join([display] + [panel(display, row, cell, height, width, alpha) for row, cell in zip(rows, cells)],
                axis=1)


def video_grid(frames, att, queries, steps, height, width, alpha):
    """One row per query, one panel per time step: frames (steps, h, w, 3) are the input frames shown under the
    steps, att (N, N) the block's A with N = steps x height x width in (t, y, x) order; GAP white pixels between
    panels. Returns (picture, [(step, row, column) of each query])."""
    size = height * width
    cells, rows = [], []
    for query in queries:
        t, (r, c) = query_step(query, steps), query_cell(query, height, width)
        weights = np.asarray(att[(t * height + r) * width + c], dtype=np.float64)  # (N,)
        scale = (min(weights.min(), 0.0), weights.max())
        panels = [panel(frames[k], weights[k * size:(k + 1) * size], (r, c) if k == t else None, height, width,
                        alpha, scale) for k in range(steps)]
        rows.append(join(panels, axis=1))
        cells.append((t, r, c))
    return join(rows, axis=0), cells


def join(parts, axis):
    """parts concatenated along axis (0: rows, 1: columns) with GAP white pixels between them."""
    shape = list(parts[0].shape)
    shape[axis] = GAP
    gap = np.full(shape, 255, dtype=np.uint8)
    out = [parts[0]]
    for part in parts[1:]:
        out += [gap, part]
    return np.concatenate(out, axis=axis)


def get_parser():
    parser = checkpoint_tool_parser(__doc__)
    parser.add_argument("--block", help="module name of the block to draw (default: the first; the names are "
                        "printed when the model has several, e.g. layer1.2 or layer3.6)")
    parser.add_argument("--queries", nargs="+", metavar="X,Y[,T]", help="query positions as fractions x,y "
                        "(default: 4 spread over the image, at 0.25 and 0.75); for a video checkpoint x,y,t with t "
                        "the time in the clip (default 0.5: the 4 in the block's middle time step)")
    parser.add_argument("--display-size", "--display_size", dest="display_size", type=int, default=256,
                        help="height of each panel in pixels; the width follows the image's aspect ratio "
                        "(default 256; CIFAR's 32 px are upscaled; video frames are square)")
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the heat map in the blend "
                        "(default 0.5)")
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", default=None,
                        help="folder for the PNGs, one per image or clip: <name>_<block>.png (default: "
                        "attention_maps/<checkpoint name>/ in the checkpoint's run folder)")
    return parser


def main(argv=None):
    return main_reporting_errors("attention_maps.py", run, get_parser().parse_args(argv))


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
    if loaded.task == "video":
        return run_video(args, loaded, name, block, queries, output_dir)
    if any(len(q) > 2 for q in queries):
        raise ConfigError("--queries x,y,t is for video checkpoints: give x,y pairs for images")
    if loaded.task == "detection":
        return run_detection(args, loaded, name, block, queries, output_dir)
    images = load_images(args, loaded, keep_aspect=True)
    for (image_name, _, display), inputs in zip(images, inputs_per_image(loaded, [(name, block)], images)):
        x = inputs[name]  # (1, C, H, W); a video re-ID model's image: (1, C, 1, H, W), one frame
        height, width = x.shape[-2:]
        att = attention_matrix(block, x).float().cpu().numpy()[0]  # (N, N)
        cells = [query_cell(q, height, width) for q in queries]
        shown_width = max(1, round(args.display_size * display.shape[1] / display.shape[0]))
        display = cv2.resize(display, (shown_width, args.display_size), interpolation=cv2.INTER_LINEAR)
        picture = grid_image(display, [att[r * width + c] for r, c in cells], cells, height, width, args.alpha)
        path = write_png(output_dir, f"{image_name}_{name}.png", picture)
        print(f"wrote {path} (block {name}: {height}x{width} positions, queries "
              f"{' '.join(f'{x:g},{y:g}' for x, y in queries)})")
    return 0


def detection_cell(query, resized, padded, grid):
    """(row, column) of the block's grid cell under the fractional point query = (x, y) of the image. The
    detector's transform resizes the image to `resized` (h, w) and pads it at the bottom and right to `padded`
    (H, W) (a multiple of its size_divisible); the block's grid (rows, columns) covers the padded canvas."""
    return tuple(min(int(q * size * cells / whole), cells - 1)
                 for q, size, whole, cells in zip(query[1::-1], resized, padded, grid))


def detection_panels(display, rows, cells, resized, padded, grid, alpha):
    """[input | one panel per query] for a detector: display is the resized image (any scale); the heat maps are
    drawn over the padded canvas (padding: black) and cropped back to the image, so each grid cell lies where the
    block sees it."""
    scale = display.shape[0] / resized[0]
    canvas = np.zeros((round(padded[0] * scale), round(padded[1] * scale), 3), dtype=np.uint8)
    canvas[:display.shape[0], :display.shape[1]] = display
    panels = [panel(canvas, row, cell, *grid, alpha)[:display.shape[0], :display.shape[1]]
              for row, cell in zip(rows, cells)]
    return join([display] + panels, axis=1)


def detector_block_input(model, name, block, image):
    """(the block's input (1, C, H, W), resized (h, w), padded (H, W)) for one image (3, h0, w0) in [0, 1]: the
    detector's own transform (normalize, resize, pad), then its backbone up to the block."""
    images, _ = model.transform([image])
    captured = capture_inputs(model.backbone, [(name, block)], images.tensors)
    return captured[name], tuple(images.image_sizes[0]), tuple(images.tensors.shape[-2:])


def run_detection(args, loaded, name, block, queries, output_dir):
    """One grid per image: the detector's backbone block, queries placed through its resize (module docstring)."""
    for image_name, tensor, original in load_images(args, loaded):
        x, resized, padded = detector_block_input(loaded.model, name, block, tensor.to(loaded.device))
        height, width = x.shape[2:]
        att = attention_matrix(block, x).float().cpu().numpy()[0]  # (N, N)
        cells = [detection_cell(q, resized, padded, (height, width)) for q in queries]
        shown_width = max(1, round(args.display_size * resized[1] / resized[0]))
        display = cv2.resize(original, (shown_width, args.display_size), interpolation=cv2.INTER_LINEAR)
        picture = detection_panels(display, [att[r * width + c] for r, c in cells], cells, resized, padded,
                                   (height, width), args.alpha)
        path = write_png(output_dir, f"{image_name}_{name}.png", picture)
        print(f"wrote {path} (block {name}: {height}x{width} positions over the {padded[0]}x{padded[1]} padded "
              f"input, image resized to {resized[0]}x{resized[1]}; query cells (row, column) "
              f"{' '.join(f'({r},{c})' for r, c in cells)})")
    return 0


def run_video(args, loaded, name, block, queries, output_dir):
    """The frames x queries grid of each clip (module docstring)."""
    clips = load_images(args, loaded)
    clip_len = loaded.clip["clip_len"]
    for (clip_name, _, display), inputs in zip(clips, inputs_per_image(loaded, [(name, block)], clips)):
        x = inputs[name]  # (1, C, T, H, W)
        steps, height, width = x.shape[2:]
        att = attention_matrix(block, x).float().cpu().numpy()[0]  # (N, N), N = T H W
        shown = [cv2.resize(display[step_frame(k, steps, clip_len)], (args.display_size, args.display_size),
                            interpolation=cv2.INTER_LINEAR) for k in range(steps)]
        picture, cells = video_grid(shown, att, queries, steps, height, width, args.alpha)
        path = write_png(output_dir, f"{clip_name}_{name}.png", picture)
        frames = " ".join(str(step_frame(k, steps, clip_len)) for k in range(steps))
        print(f"wrote {path} (block {name}: {steps}x{height}x{width} positions (t, y, x); rows = queries at "
              f"(t, y, x) {' '.join(f'({t},{r},{c})' for t, r, c in cells)}; columns = time steps, over clip "
              f"frames {frames} of {clip_len})")
    return 0


def write_png(folder, file_name, picture):
    return write_image(os.path.join(folder, file_name), picture, [cv2.IMWRITE_PNG_COMPRESSION, 9])


if __name__ == "__main__":
    sys.exit(main())
