"""The 3D-ResNets framework's training recipes (Hara et al., 3D-ResNets-PyTorch; docs/video.md), applied to unset flags.

Numbers from that framework's opts.py and README: SGD, lr 0.1, momentum 0.9, dampening 0.9, weight decay 1e-3,
batch 128, 200 epochs, clips of 16 frames at 112 x 112; fine-tuning a Kinetics model on UCF-101 / HMDB-51 trains
conv5_x (layer4) and the fc (--ft_begin_index 4). Its lr fell by 10x when the validation loss stopped improving
(ReduceLROnPlateau, patience 10); here the lr is a fixed function of the epoch, decayed at the epochs of its later
multistep schedule (50, 100, 150): a resumed run needs no validation history, and no training decision is taken on
the test split (docs/video.md, "Deviations").
"""
import math
import os

from lib.engine.checks import CPUS, check, check_output_dir, check_run_name, check_schedule_and_mode, fill, fill_recipe
from lib.engine.cli import parse_stages
from lib.engine.video.cli import VIDEO_DATASETS
from models.video import VIDEO_BACKBONES

_FRAMEWORK = dict(batch_size=128, lr=0.1, momentum=0.9, dampening=0.9, weight_decay=1e-3, epochs=200,
                  lr_steps=[50, 100, 150], warmup_epochs=0, eval_freq=1, clip_len=16, frame_step=1,
                  frame_size=112, test_clips=10, hflip=0.5, backbone="resnet3d", arch="50", seed=1,
                  save_every_minutes=0)
VIDEO_RECIPES = {
    # Fine-tuning from Kinetics (--pretrained PATH, --ft-begin-index 4) or, without it, training from scratch.
    "ucf101": _FRAMEWORK,
    "hmdb51": _FRAMEWORK,
    # Kinetics epochs are long (240k videos): also a checkpoint every 30 minutes, as for ImageNet.
    "kinetics": dict(_FRAMEWORK, save_every_minutes=30),
    "videofolder": dict(_FRAMEWORK, save_every_minutes=30),
    # Smoke runs on generated clips: tiny clips, a small network, two epochs.
    "fake": dict(_FRAMEWORK, batch_size=4, lr=0.01, epochs=2, lr_steps=[1], clip_len=4, frame_size=32,
                 test_clips=2, arch="18"),
}
COMMON_DEFAULTS = dict(workers=min(4, CPUS), nl_type="snl", nl_nums=1, stage_nums=1, div=2)


def _validate(args):
    for flag in ("lr", "lr_gamma", "weight_decay", "momentum", "dampening", "div", "hflip"):
        check(math.isfinite(getattr(args, flag)), f"--{flag.replace('_', '-')} must be a finite number, got "
               f"{getattr(args, flag)}")
    check(args.backbone in VIDEO_BACKBONES, f"unknown video backbone {args.backbone!r}; valid: "
           f"{', '.join(VIDEO_BACKBONES)}")
    check(args.epochs >= 1 and args.batch_size >= 1, f"--epochs and --batch-size must be >= 1, got {args.epochs}, "
           f"{args.batch_size}")
    check(args.lr > 0 and args.lr_gamma > 0, f"--lr and --lr-gamma must be positive, got {args.lr}, "
           f"{args.lr_gamma}")
    check(0 <= args.momentum < 1 and 0 <= args.dampening <= 1, f"--momentum must be in [0, 1) and --dampening in "
           f"[0, 1], got {args.momentum}, {args.dampening}")
    check(args.weight_decay >= 0, f"--weight-decay must be >= 0, got {args.weight_decay}")
    check(0 <= args.hflip <= 1, f"--hflip is a probability in [0, 1], got {args.hflip}")
    for flag in ("clip_len", "frame_step", "frame_size", "test_clips", "eval_freq", "print_freq", "stage_nums"):
        check(getattr(args, flag) >= 1, f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    for flag in ("warmup_epochs", "workers", "seed", "keep_checkpoints", "nl_nums"):
        check(getattr(args, flag) >= 0, f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")
    check(args.save_every >= 0 and args.save_every_minutes >= 0,
           f"--save-every and --save-every-minutes must be >= 0, got {args.save_every}, {args.save_every_minutes}")
    check(0 <= args.ft_begin_index <= 5, f"--ft-begin-index must be in 0..5, got {args.ft_begin_index}")
    check_schedule_and_mode(args)
    check(not isinstance(args.pretrained, str) or os.path.isfile(args.pretrained),
           f"--pretrained {args.pretrained}: expected True/False or an existing checkpoint file")
    check_run_name(args.checkpoints)
    check_output_dir(args.output_dir)


# The clip a model was trained on: --valid evaluates with the checkpoint's own unless a flag says otherwise.
CLIP_SETTINGS = ("clip_len", "frame_step", "frame_size", "normalization")


def valid_clip_from_checkpoint(args):
    """--valid: the clip settings the flags leave unset come from the checkpoint's run (its stored args), not
    the recipe: a run at 4 frames x 32 px is evaluated on such clips. args.clip_from_checkpoint says which, for
    the log (set with --valid only). Call before the recipe resolves args; returns args."""
    if not getattr(args, "valid", False) or not getattr(args, "check_path", None):
        return args
    from lib.engine.checkpoint import load_checkpoint  # torch is only needed here
    run_args = load_checkpoint(args.check_path).get("args") or {}
    taken = [name for name in CLIP_SETTINGS if getattr(args, name, None) is None and run_args.get(name) is not None]
    for name in taken:
        setattr(args, name, run_args[name])
    args.clip_from_checkpoint = ", ".join(f"--{name.replace('_', '-')} {run_args[name]}" for name in taken)
    return args


def resolve_video_args(args):
    """Fill unset flags from the recipe of args.dataset, normalize spellings, validate; returns args (changed)."""
    if getattr(args, "resolved", False):
        return args
    fill_recipe(args, VIDEO_RECIPES, COMMON_DEFAULTS, "video", VIDEO_DATASETS)
    fill(args, "ft_begin_index", 4 if args.pretrained else 0)
    args.lr_steps = [int(step) for step in args.lr_steps]
    args.arch = str(args.arch)
    if args.nl_layer is not None:
        args.nl_layer = parse_stages(args.nl_layer)
    if str(args.nl_type).lower() in ("none", "base"):
        args.nl_type, args.nl_nums = None, 0
    fill(args, "checkpoints", args.nl_type if args.nl_nums and args.nl_type else "base")
    if float(args.div).is_integer():
        args.div = int(args.div)  # so build_args and file names read 2, not 2.0
    _validate(args)
    # The recipe a linear --lr-scale refers to, and the task every checkpoint and args.yaml of the run records.
    args.recipe, args.task = args.dataset, "video"
    args.resolved = True
    return args
