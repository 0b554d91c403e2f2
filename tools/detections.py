#!/usr/bin/env python3
"""Detections of a train_det.py checkpoint drawn on an image: boxes, instance masks and category names.

    python tools/detections.py save_model/coco/maskrcnn50/snl/model_best.pth.tar street.jpg
    python tools/detections.py CHECKPOINT --index 12 --score-threshold 0.3      # a validation image
    python tools/detections.py CHECKPOINT street.jpg --output out/street.png --scale 1

The model runs in eval mode on the whole image (its own transform resizes it to the run's min / max size and
maps the boxes back to the image). Every detection scoring at least --score-threshold is drawn: its mask (Mask
R-CNN; the per-pixel probability above 0.5, torchvision's and COCOeval's binarization) blended in its category's
colour (--alpha), its box, and a label "<category name> <score>" on the box's top edge. Category names are the
dataset's (the run's --dataset / its annotation files; the labels map back to category ids as the evaluation
maps them); where the dataset cannot be read, a note says so and labels are shown as numbers. The picture is
enlarged so that its shorter side is at least 480 pixels (--scale overrides; 1 = the image's own pixels).
Without --output the PNG goes next to the checkpoint: <checkpoint name>_detections_<image name>.png.
"""
import argparse
import colorsys
import os
import sys

import cv2
import numpy as np
import torch

import tools  # noqa: F401  (python tools/x.py: puts the repository root on sys.path, tools/tools.py)
from lib.data.coco import build_detection_datasets
from lib.engine.cli import OneLineParser
from lib.errors import ConfigError
from tools._inputs import read_image
from tools._outputs import check_output_file, checkpoint_stem, main_reporting_errors, run_folder, write_image
from tools._task_checkpoint import load_task_model, progress

MASK_THRESHOLD = 0.5
MIN_SHORT_SIDE = 480  # default enlargement: labels stay readable on small images
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def colour(label):
    """A distinct, saturated BGR colour per label (golden-ratio hues), the same in every picture."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def draw(image, detections, names, threshold, alpha=0.45, scale=1.0):
    """image uint8 BGR (H, W, 3) with the detections (torchvision's dict: boxes (N, 4) xyxy, labels, scores,
    [masks (N, 1, H, W) probabilities]) of score >= threshold drawn on it, enlarged by scale; returns (picture,
    number drawn). names: {label: name}."""
    keep = (detections["scores"] >= threshold).nonzero().flatten().tolist()
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    out = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR) if scale != 1 else image.copy()
    # Masks first, all of them, so that no mask is painted over another detection's box or label.
    for i in keep:
        if "masks" not in detections:
            break
        mask = detections["masks"][i, 0].float().cpu().numpy()
        if scale != 1:
            mask = cv2.resize(mask, size, interpolation=cv2.INTER_LINEAR)
        inside = mask > MASK_THRESHOLD
        tint = np.array(colour(int(detections["labels"][i])), np.float32)
        out[inside] = (out[inside] * (1 - alpha) + tint * alpha).round().astype(np.uint8)
    thickness = max(1, round(min(size) / 240))
    for i in keep:
        label = int(detections["labels"][i])
        x0, y0, x1, y1 = (int(round(float(v) * scale)) for v in detections["boxes"][i])
        cv2.rectangle(out, (x0, y0), (x1, y1), colour(label), thickness)
        text = f"{names.get(label, f'label {label}')} {float(detections['scores'][i]):.2f}"
        font = 0.35 * thickness
        (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
        top = max(0, y0 - h - base - 2)
        cv2.rectangle(out, (x0, top), (x0 + w + 2, top + h + base + 2), colour(label), -1)
        cv2.putText(out, text, (x0 + 1, top + h + 1), cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255), 1, cv2.LINE_AA)
    return out, len(keep)


@torch.no_grad()
def predict(model, image):
    """The model's detections (eval mode) for one float (3, H, W) image in [0, 1], on the CPU."""
    device = next(model.parameters()).device
    return {key: value.cpu() for key, value in model([image.to(device)])[0].items()}


def validation_set(run_args, data_dir):
    """The run's validation CocoDetection (annotations read, images only when indexed)."""
    dataset = run_args.get("dataset")
    if not dataset:
        raise ConfigError("the checkpoint does not say which dataset it was trained on: pass --dataset")
    masks = False  # only the names and images are needed here, not the decoded ground truth
    _, val_set, _ = build_detection_datasets(
        dataset, data_dir, train_ann=run_args.get("train_ann"), train_images=run_args.get("train_images"),
        val_ann=run_args.get("val_ann"), val_images=run_args.get("val_images"), masks=masks)
    return val_set


def category_names(val_set, num_classes):
    """{label: category name}: labels are 1..K over the sorted category ids, or the ids themselves when the
    model's heads are as wide as the largest id + 1 (labels_as_ids: torchvision's COCO heads)."""
    ids = sorted(val_set.coco.cats)
    as_ids = num_classes != len(ids) + 1 and num_classes == max(ids) + 1
    labels = ids if as_ids else range(1, len(ids) + 1)
    return {label: val_set.coco.cats[cat]["name"] for label, cat in zip(labels, ids)}


def get_parser():
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a checkpoint of train_det.py")
    parser.add_argument("image", nargs="?", help="an image file (any format PIL reads)")
    parser.add_argument("--index", type=int, metavar="I", help="a validation image of the run's dataset instead")
    parser.add_argument("--dataset", help="coco | cocoformat | fake (default: the run's)")
    parser.add_argument("--data-dir", "--data_dir", dest="data_dir", help="its root (default: the run's)")
    parser.add_argument("--score-threshold", "--score_threshold", dest="score_threshold", type=float, default=0.5,
                        help="draw detections scoring at least this (default 0.5)")
    parser.add_argument("--alpha", type=float, default=0.45, help="weight of a mask's colour (default 0.45)")
    parser.add_argument("--scale", type=float, help=f"enlargement of the picture (default: the shorter side to "
                        f"at least {MIN_SHORT_SIDE} pixels)")
    parser.add_argument("--output", metavar="FILE.png", help="the picture (default: next to the checkpoint)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    return parser


def main(argv=None):
    return main_reporting_errors("detections.py", run, get_parser().parse_args(argv))


def run(args):
    if (args.image is None) == (args.index is None):
        raise ConfigError("give an image file or --index of a validation image (one of them)")
    if not 0 <= args.score_threshold <= 1 or not 0 <= args.alpha <= 1 or (args.scale is not None and args.scale <= 0):
        raise ConfigError("--score-threshold and --alpha must lie in [0, 1] and --scale be positive")
    if args.output:  # before any computation
        check_output_file("--output", args.output, IMAGE_SUFFIXES)
    model, run_args, checkpoint = load_task_model(args.checkpoint, "detection", args.device)
    if args.dataset:
        run_args["dataset"] = args.dataset
    data_dir = args.data_dir or run_args.get("data_dir") or "./data"
    try:
        val_set = validation_set(run_args, data_dir)
    except ConfigError as error:
        if args.index is not None:
            raise
        val_set = None
        print(f"note: labels shown as numbers: the run's dataset cannot be read ({error})")
    if args.index is not None:
        if not 0 <= args.index < len(val_set):
            raise ConfigError(f"--index {args.index} out of range: the {run_args['dataset']} validation set has "
                              f"{len(val_set)} images (0..{len(val_set) - 1})")
        image = val_set[args.index][0]
        name = f"{run_args['dataset']}_{args.index}"
    else:
        image = torch.from_numpy(np.asarray(read_image(args.image)).copy()).permute(2, 0, 1).float().div_(255)
        name = os.path.splitext(os.path.basename(args.image))[0]
    output = args.output or os.path.join(run_folder(args.checkpoint),
                                         f"{checkpoint_stem(args.checkpoint)}_detections_{name}.png")
    check_output_file("--output", output, IMAGE_SUFFIXES)
    names = category_names(val_set, checkpoint["model_args"]["num_classes"]) if val_set is not None else {}
    detections = predict(model, image)
    bgr = np.ascontiguousarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)[:, :, ::-1])
    scale = args.scale or max(1.0, MIN_SHORT_SIDE / min(bgr.shape[:2]))
    picture, drawn = draw(bgr, detections, names, args.score_threshold, args.alpha, scale)
    write_image(output, picture)
    shown = ", ".join(f"{names.get(int(label), f'label {int(label)}')} {float(score):.2f}"
                      for label, score in zip(detections["labels"], detections["scores"])
                      if score >= args.score_threshold)
    print(f"wrote {output} ({drawn} of {len(detections['scores'])} detections at score >= "
          f"{args.score_threshold:g}{': ' + shown if shown else ''}; {progress(checkpoint)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
