"""torchvision's detection reference recipe (references/detection, Mask R-CNN R50-FPN), applied to unset flags.

SGD, lr 0.02 for a global batch of 16 (2 images x 8 GPUs; --lr-scale linear rescales it for another global
batch, as in the other tasks), momentum 0.9, weight decay 1e-4, 26 epochs with the lr x 0.1 at epochs 16 and 22,
a linear warm-up over the first 1000 iterations from lr x 0.001; images resized to 800 (max 1333), hflip 0.5,
aspect-ratio group factor 3. --schedule 1x: Detectron2 / mmdetection's 12 epochs, steps at 8 and 11.
"""
import math
import os

from lib.engine.checks import CPUS, check, check_output_dir, check_run_name, check_schedule_and_mode, fill
from lib.engine.detection.cli import DET_DATASETS
from lib.errors import ConfigError

RECIPE_BATCH = 16  # the global batch the lr 0.02 is for
SCHEDULES = {"26ep": dict(epochs=26, lr_steps=[16, 22]), "1x": dict(epochs=12, lr_steps=[8, 11])}
_REFERENCE = dict(data_dir="./data/coco", batch_size=2, lr=0.02, momentum=0.9, weight_decay=1e-4, warmup_iters=1000,
                  warmup_factor=0.001, warmup_epochs=0, eval_freq=1, min_size=800, max_size=1333, hflip=0.5,
                  aspect_ratio_group_factor=3, arch="50", seed=1, schedule="26ep", save_every_minutes=30)
DET_RECIPES = {
    "coco": _REFERENCE,
    "cocoformat": _REFERENCE,
    # Smoke runs: a few 64-96 px images, ResNet-18, two epochs, the lr of the reference scaled to the batch of 2
    # (0.02 x 2 / 16); the warm-up and the step still happen.
    "fake": dict(_REFERENCE, data_dir="./data/fake_det", batch_size=2, lr=0.0025, warmup_iters=2, min_size=64,
                 max_size=96, arch="18", epochs=2, lr_steps=[1], save_every_minutes=0),
}
COMMON_DEFAULTS = dict(workers=min(4, CPUS))


def _validate(args):
    for flag in ("lr", "lr_gamma", "weight_decay", "momentum", "div", "hflip", "warmup_factor"):
        check(math.isfinite(getattr(args, flag)), f"--{flag.replace('_', '-')} must be a finite number, got "
              f"{getattr(args, flag)}")
    check(args.arch in ("18", "34", "50", "101"), f"--arch must be 18, 34, 50 or 101, got {args.arch}")
    check(args.epochs >= 1 and args.batch_size >= 1, f"--epochs and --batch-size must be >= 1, got {args.epochs}, "
          f"{args.batch_size}")
    check(args.lr > 0 and args.lr_gamma > 0, f"--lr and --lr-gamma must be positive, got {args.lr}, {args.lr_gamma}")
    check(0 <= args.momentum < 1, f"--momentum must be in [0, 1), got {args.momentum}")
    check(args.weight_decay >= 0, f"--weight-decay must be >= 0, got {args.weight_decay}")
    check(0 <= args.hflip <= 1, f"--hflip is a probability in [0, 1], got {args.hflip}")
    check(0 < args.warmup_factor <= 1, f"--warmup-factor must be in (0, 1], got {args.warmup_factor}")
    for flag in ("min_size", "max_size", "eval_freq", "print_freq", "stage_nums"):
        check(getattr(args, flag) >= 1, f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    check(args.max_size >= args.min_size, f"--max-size {args.max_size} is below --min-size {args.min_size}")
    for flag in ("warmup_iters", "warmup_epochs", "workers", "seed", "keep_checkpoints", "nl_nums",
                 "aspect_ratio_group_factor"):
        check(getattr(args, flag) >= 0, f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")
    check(args.save_every >= 0 and args.save_every_minutes >= 0,
          f"--save-every and --save-every-minutes must be >= 0, got {args.save_every}, {args.save_every_minutes}")
    check(0 <= args.trainable_backbone_layers <= 5,
          f"--trainable-backbone-layers must be in 0..5, got {args.trainable_backbone_layers}")
    trained = bool(args.pretrained) or bool(args.pretrained_backbone)
    # torchvision's rule: frozen statistics of a from-scratch ResNet (0 / 1) would normalize nothing.
    check(trained or not args.frozen_bn, "--frozen-bn True needs pretrained weights (--pretrained or "
          "--pretrained-backbone): without them the frozen statistics normalize nothing")
    check_schedule_and_mode(args)
    check(not isinstance(args.pretrained, str) or os.path.isfile(args.pretrained),
          f"--pretrained {args.pretrained}: expected True/False or an existing state_dict file")
    check(not args.save_predictions or args.valid, "--save-predictions goes with --valid --check_path CHECKPOINT")
    check_run_name(args.checkpoints)
    check_output_dir(args.output_dir)


def resolve_det_args(args):
    """Fill unset flags from the recipe of args.dataset and --schedule, validate; returns args (changed)."""
    if getattr(args, "resolved", False):
        return args
    if args.dataset not in DET_RECIPES:
        raise ConfigError(f"unknown detection dataset {args.dataset!r}; valid: {', '.join(DET_DATASETS)}")
    recipe = DET_RECIPES[args.dataset]
    for name, value in list(recipe.items()) + list(COMMON_DEFAULTS.items()):
        fill(args, name, value)
    for name, value in SCHEDULES[args.schedule].items():  # the fake recipe's own epochs / steps came first
        fill(args, name, value)
    args.lr_steps = [int(step) for step in args.lr_steps]
    args.arch = str(args.arch)
    if str(args.nl_type).lower() in ("none", "base"):
        args.nl_type, args.nl_nums = None, 0
    # Resolved here, not left to the builder: a resumed model is built without its pretrained weights, and must
    # still get the norm layers and trainable stages of the run that wrote the checkpoint.
    trained = bool(args.pretrained) or bool(args.pretrained_backbone)
    fill(args, "frozen_bn", trained)
    fill(args, "trainable_backbone_layers", 3 if trained else 5)
    # torchvision's COCO heads use COCO's category ids as labels: fine-tuning them needs the same labels.
    fill(args, "labels_as_ids", args.dataset == "coco" and args.pretrained is True)
    fill(args, "checkpoints", args.nl_type if args.nl_nums and args.nl_type else "base")
    if float(args.div).is_integer():
        args.div = int(args.div)  # so build_args and file names read 2, not 2.0
    _validate(args)
    args.recipe, args.task = args.dataset, "detection"  # the recipe --lr-scale refers to; the run's task
    args.resolved = True
    return args
