"""The re-ID training recipes, applied to unset flags (flags and --config win).

Image sets: BoT (Luo et al., CVPRW 2019, its configs/softmax_triplet_with_center.yml; AGW, Ye et al. TPAMI 2021,
the same schedule): 256 x 128, flip 0.5, pad 10 + random crop, random erasing 0.5, P x K = 16 x 4 = 64, Adam lr
3.5e-4, weight decay 5e-4, 10 warm-up epochs from 1% of the lr, x 0.1 at epochs 40 and 70, 120 epochs, CE with
label smoothing 0.1 + batch-hard triplet (margin 0.3) on the pre-BN feature, ImageNet weights, last stride 1.
Video sets: Gao & Nevatia 2018 ("Revisiting Temporal Modeling for Video-based Person ReID"): T = 4 frames, 224 x
112, batch 32 = 8 identities x 4 tracklets, Adam lr 3e-4; the epoch schedule is BoT's above (theirs decayed by
steps of their own iteration counts; docs/reid.md, "Deviations").

The warm-up is lib.engine.schedule.WarmupStepSchedule's: numpy.linspace(lr * gamma^len(steps), lr, warmup)[epoch],
which with the two steps and gamma 0.1 starts at 1% of the lr and rises linearly to the full lr at epoch 9 (BoT's
WarmupMultiStepLR reaches it at epoch 10: a 10% larger rise per epoch, the same start and end).
"""
import math
import os

from lib.engine.checks import CPUS, check, check_output_dir, check_run_name, check_schedule_and_mode, fill, fill_recipe
from lib.engine.reid.cli import REID_DATASETS

VIDEO_SETS = ("mars", "ilidsvid", "prid2011", "fakevideo")
SPLIT_SETS = ("ilidsvid", "prid2011")  # the ten train/test splits (--split all)
_BOT = dict(img_size=[256, 128], batch_size=64, lr=3.5e-4, weight_decay=5e-4, epochs=120, lr_steps=[40, 70],
            warmup_epochs=10, eval_freq=10, arch="50", pretrained=True, save_every_minutes=0)
_VIDEO = dict(_BOT, img_size=[224, 112], batch_size=32, lr=3e-4, seq_len=4)
# Smoke runs on generated data: ResNet-18 at 64 x 32, 4 identities x 4 per batch, two epochs, no download.
_FAKE = dict(img_size=[64, 32], batch_size=16, lr=3.5e-4, weight_decay=5e-4, epochs=2, lr_steps=[1],
             warmup_epochs=0, eval_freq=1, arch="18", pretrained=False, save_every_minutes=0)
REID_RECIPES = {
    "market1501": _BOT, "dukemtmcreid": _BOT, "reidfolder": _BOT,
    "msmt17": dict(_BOT, save_every_minutes=30),  # long epochs (32k images): a checkpoint every 30 minutes too
    "mars": dict(_VIDEO, save_every_minutes=30),
    "ilidsvid": _VIDEO, "prid2011": _VIDEO,
    "fake": _FAKE, "fakevideo": dict(_FAKE, seq_len=2),
}
COMMON_DEFAULTS = dict(workers=min(4, CPUS), hflip=0.5, pad=10, erasing=0.5, seq_len=4, test_sampling="dense",
                       trunk="resnet", last_stride=1, pooling="avg", temporal="avg", nl_type="snl", nl_nums=1,
                       stage_nums=1, div=2, triplet="hard", margin=0.3, label_smoothing=0.1, center_loss=0.0,
                       center_lr=0.5, num_instances=4, distance="euclidean", rerank=False, seed=1)


def _validate(args):
    for flag in ("lr", "lr_gamma", "weight_decay", "div", "hflip", "erasing", "margin", "label_smoothing",
                 "center_loss", "center_lr"):
        check(math.isfinite(getattr(args, flag)), f"--{flag.replace('_', '-')} must be a finite number")
    check(args.lr > 0 and args.lr_gamma > 0 and args.center_lr > 0, "--lr, --lr-gamma and --center-lr must be "
          f"positive, got {args.lr}, {args.lr_gamma}, {args.center_lr}")
    check(args.weight_decay >= 0 and args.margin >= 0 and args.center_loss >= 0, "--weight-decay, --margin and "
          f"--center-loss must be >= 0, got {args.weight_decay}, {args.margin}, {args.center_loss}")
    check(0 <= args.hflip <= 1 and 0 <= args.erasing <= 1, "--hflip and --erasing are probabilities in [0, 1]")
    check(0 <= args.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    for flag in ("epochs", "batch_size", "seq_len", "eval_freq", "print_freq", "stage_nums", "num_instances"):
        check(getattr(args, flag) >= 1, f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    for flag in ("warmup_epochs", "workers", "seed", "keep_checkpoints", "pad"):
        check(getattr(args, flag) >= 0, f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")
    check(min(args.img_size) >= 16, f"--img-size must be at least 16 x 16, got {args.img_size}")
    check(args.batch_size % args.num_instances == 0 and args.batch_size // args.num_instances >= 2,
          f"--batch-size {args.batch_size} must be a multiple of --num-instances {args.num_instances} with at least "
          "2 identities per batch (the triplet loss needs negatives)")
    check(args.save_every >= 0 and args.save_every_minutes >= 0, "--save-every and --save-every-minutes must be >= 0")
    check(args.split == "all" or 0 <= args.split <= 9, f"--split must be 0..9 or all, got {args.split}")
    check(args.split != "all" or args.dataset in SPLIT_SETS, f"--split all: only {' and '.join(SPLIT_SETS)} have "
          f"ten splits, not {args.dataset}")
    check(args.split != "all" or not args.valid, "--valid evaluates one split: pass --split K")
    # GradScaler unscales only the optimizer's own groups: the centres' SGD would step on scaled gradients.
    check(not (args.center_loss > 0 and args.amp == "fp16"), "--center-loss with --amp fp16 is not supported: use "
          "--amp bf16 or off")
    check(args.trunk == "resnet" or args.backbone == "reid_video", "--backbone resnet3d is for video re-ID sets "
          f"({', '.join(VIDEO_SETS)})")
    check(not args.save_features or args.valid, "--save-features goes with --valid --check_path")
    check_schedule_and_mode(args)
    check(not isinstance(args.pretrained, str) or os.path.isfile(args.pretrained),
          f"--pretrained {args.pretrained}: expected True/False or an existing file")
    check_run_name(args.checkpoints)
    check_output_dir(args.output_dir)


def resolve_reid_args(args):
    """Fill unset flags from the recipe of args.dataset, set the model builder's backbone ('reid' for image sets,
    'reid_video' for video sets: what args.yaml, the run folder and the tools read), validate; returns args."""
    if getattr(args, "resolved", False):
        return args
    fill_recipe(args, REID_RECIPES, COMMON_DEFAULTS, "re-ID", REID_DATASETS)
    args.backbone = "reid_video" if args.dataset in VIDEO_SETS else "reid"
    if args.trunk == "resnet3d" and "pretrained" not in (getattr(args, "explicit", None) or ()):
        args.pretrained = False  # torchvision's ImageNet weights are 2-D: a 3-D trunk takes a file
    args.img_size = [int(v) for v in args.img_size]
    args.lr_steps = [int(step) for step in args.lr_steps]
    args.arch = str(args.arch)
    if str(args.nl_type).lower() in ("none", "base"):
        args.nl_type, args.nl_nums = None, 0
    fill(args, "checkpoints", args.nl_type if args.nl_nums and args.nl_type else "base")
    if float(args.div).is_integer():
        args.div = int(args.div)
    _validate(args)
    args.recipe, args.task = args.dataset, "reid"
    args.resolved = True
    return args
