"""Command line of train_seg.py and the segmentation recipe (the authors' mmsegmentation Cityscapes config).

Precedence, lowest first: the dataset's recipe (fills only flags left unset) < --config FILE.yaml < command-line
flags. No flag uses argparse's bool type: bool-ish flags go through parse_bool. See docs/segmentation.md.
"""
import os

from lib.engine.checks import CPUS, DEVICE_PATTERN, check
from lib.engine.cli import OneLineParser, add_run_flags, parse_bool, parse_pretrained
from lib.engine.config import parse_flags

# Iteration schedule, optimizer and pipeline of the config (SNL R50-D8, Cityscapes, 40k iterations).
_CITYSCAPES = dict(iters=40000, batch_size=4, lr=0.01, min_lr=1e-4, power=0.9, momentum=0.9, weight_decay=5e-4,
                   eval_every=4000, crop_size=[512, 1024], img_scale=[2048, 1024], ratio_range=[0.5, 2.0],
                   cat_max_ratio=0.75, hflip=0.5, aux_weight=0.4, pretrained=True, save_every_minutes=30)
SEG_RECIPES = {
    "cityscapes": _CITYSCAPES,
    # Smoke runs: the same schedule on 128x256 synthetic scenes (fake_scenes.SIZE), no pretrained weights.
    "fake": dict(_CITYSCAPES, crop_size=[64, 128], img_scale=[256, 128], pretrained=False, save_every_minutes=0),
}
COMMON_DEFAULTS = dict(seed=67, workers=min(4, CPUS), nl_type="snl", stage_nums=1, div=2, backbone="resnet",
                       arch="50")


# The smallest crop side that trains: the backbone's output stride 8 maps a side of 1-8 px to one position, and with
# one position per image (-b 1) the head's BatchNorm has one value per channel and raises. Measured: 9 works.
MIN_CROP_SIDE = 9


def get_args_parser(add_help=True):
    parser = OneLineParser(prog="train_seg.py", add_help=add_help, description="Train / evaluate semantic "
                           "segmentation (dilated ResNet + nonlocal decode head) on Cityscapes")
    model = parser.add_argument_group("data and model")
    model.add_argument("--dataset", default="cityscapes", help="cityscapes | fake (synthetic scenes in memory)")
    model.add_argument("--data_dir", "--data-dir", dest="data_dir", default="./data",
                       help="Cityscapes root: <data_dir>/cityscapes or <data_dir> holding leftImg8bit/ and gtFine/")
    model.add_argument("--backbone", default=None, help="resnet (default)")
    model.add_argument("--arch", default=None, help="50 (default) or 101")
    model.add_argument("--nl-type", "--nl_type", dest="nl_type", default=None,
                       help="the decode head's block: snl (default), nl, a2, ns, dnl, cgnl, cc, ... or none")
    model.add_argument("--stage-nums", "--stage_nums", dest="stage_nums", type=int, default=None,
                       help="units per nonlocal stage (default 1)")
    model.add_argument("--div", type=float, default=None, help="C' = int(512 / div) (default 2: C' = 256)")
    for names, text in ((("--is_sys", "--is-sys"), "symmetric affinity"),
                        (("--is_norm", "--is-norm"), "normalized ReLU affinity")):
        model.add_argument(*names, nargs="?", const=True, default=None, type=parse_bool, metavar="BOOL",
                           help=f"{text} (switch; default: the block's own)")
    model.add_argument("--output-relu", "--output_relu", dest="output_relu", nargs="?", const=True, default=None,
                       type=parse_bool, metavar="BOOL", help="ReLU after each unit of a stage block (default False: "
                       "the head block starts as the identity and learns; True: BN weight 1; docs/blocks.md)")
    model.add_argument("--pretrained", type=parse_pretrained, default=None, metavar="BOOL|PATH",
                       help="backbone weights: True (torchvision ImageNet, downloaded; the cityscapes default), "
                       "False, or a torchvision-format ResNet state_dict file")
    model.add_argument("--aux-weight", "--aux_weight", dest="aux_weight", type=float, default=None,
                       help="loss weight of the auxiliary head on layer3 (default 0.4; 0 = no auxiliary head)")

    sched = parser.add_argument_group("schedule and pipeline (unset = the recipe, the authors' config)")
    sched.add_argument("--iters", type=int, default=None, help="training iterations (default 40000)")
    sched.add_argument("-b", "--batch-size", "--batch_size", dest="batch_size", type=int, default=None,
                       help="images per process and iteration (default 4)")
    sched.add_argument("--lr", type=float, default=None, help="base learning rate (default 0.01)")
    sched.add_argument("--min-lr", "--min_lr", dest="min_lr", type=float, default=None,
                       help="poly decay floor (default 1e-4)")
    sched.add_argument("--power", type=float, default=None, help="poly decay power (default 0.9)")
    sched.add_argument("--momentum", type=float, default=None, help="SGD momentum (default 0.9)")
    sched.add_argument("--weight-decay", "--wd", dest="weight_decay", type=float, default=None,
                       help="SGD weight decay (default 5e-4)")
    sched.add_argument("--eval-every", "--eval_every", dest="eval_every", type=int, default=None,
                       help="evaluate and checkpoint every N iterations and after the last (default 4000)")
    sched.add_argument("--crop-size", "--crop_size", dest="crop_size", type=int, nargs=2, default=None,
                       metavar=("H", "W"), help="training crop (default 512 1024; fake: 64 128)")
    sched.add_argument("--img-scale", "--img_scale", dest="img_scale", type=int, nargs=2, default=None,
                       metavar=("LONG", "SHORT"), help="resize scale before the ratio (default 2048 1024; "
                       "fake: 256 128); validation images are resized to it")
    sched.add_argument("--ratio-range", "--ratio_range", dest="ratio_range", type=float, nargs=2, default=None,
                       metavar=("LOW", "HIGH"), help="random resize ratio range (default 0.5 2.0)")
    sched.add_argument("--cat-max-ratio", "--cat_max_ratio", dest="cat_max_ratio", type=float, default=None,
                       help="a crop's largest class must cover less than this of it (default 0.75; 1 = any crop)")
    sched.add_argument("--hflip", type=float, default=None, help="horizontal flip probability (default 0.5)")
    sched.add_argument("--photometric", nargs="?", const=True, default=True, type=parse_bool, metavar="BOOL",
                       help="photometric distortion (default True)")
    sched.add_argument("--seed", type=int, default=None, help="random seed (default 67)")

    add_run_flags(parser, print_freq=50, steps="iteration", checkpoints="snl", model_dir="<backbone><arch>")
    return parser


def parse_seg_args(argv=None):
    """Flags over --config over parser defaults; args.explicit lists the flags given (the recipe fills the rest
    in resolve_seg_args, called by main)."""
    return parse_flags(argv, get_args_parser)


def resolve_seg_args(args):
    """Fill unset flags from the dataset's recipe, normalize, validate; returns args (changed in place)."""
    if getattr(args, "resolved", False):
        return args
    check(args.dataset in SEG_RECIPES, f"unknown dataset {args.dataset!r}; valid: {', '.join(SEG_RECIPES)}")
    for name, value in list(SEG_RECIPES[args.dataset].items()) + list(COMMON_DEFAULTS.items()):
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    args.arch = str(args.arch)
    if str(args.nl_type).lower() in ("none", "base"):
        args.nl_type = None
    if float(args.div).is_integer():
        args.div = int(args.div)
    for name in ("crop_size", "img_scale", "ratio_range"):
        check(len(getattr(args, name)) == 2, f"--{name.replace('_', '-')} takes two values, got "
               f"{getattr(args, name)}")
    args.crop_size, args.img_scale = [int(v) for v in args.crop_size], [int(v) for v in args.img_scale]
    args.ratio_range = [float(v) for v in args.ratio_range]
    check(args.iters >= 1, f"--iters must be >= 1, got {args.iters}")
    check(args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}")
    check(args.lr > 0 and args.min_lr >= 0, f"--lr must be > 0 and --min-lr >= 0, got {args.lr}, {args.min_lr}")
    check(args.eval_every >= 1, f"--eval-every must be >= 1, got {args.eval_every}")
    check(args.print_freq >= 1, f"--print-freq must be >= 1, got {args.print_freq}")
    check(min(args.crop_size) >= 1 and min(args.img_scale) >= 1, "--crop-size and --img-scale must be positive")
    check(min(args.crop_size) >= MIN_CROP_SIDE, f"--crop-size {args.crop_size[0]} {args.crop_size[1]} is too small "
           f"for the segmentor's output stride 8: each side must be at least {MIN_CROP_SIDE} (a side of 8 or less "
           f"leaves one feature position there, on which the head's BatchNorm cannot train)")
    check(0 < args.ratio_range[0] <= args.ratio_range[1], f"--ratio-range must be 0 < LOW <= HIGH, got "
           f"{args.ratio_range}")
    check(0 <= args.hflip <= 1, f"--hflip is a probability, got {args.hflip}")
    check(0 < args.cat_max_ratio <= 1, f"--cat-max-ratio must be in (0, 1], got {args.cat_max_ratio}")
    check(args.aux_weight >= 0, f"--aux-weight must be >= 0, got {args.aux_weight}")
    check(args.workers >= 0 and args.seed >= 0, "--workers and --seed must be >= 0")
    check(args.keep_checkpoints >= 0, f"--keep-checkpoints must be >= 0, got {args.keep_checkpoints}")
    check(args.save_every >= 0 and args.save_every_minutes >= 0,
           f"--save-every and --save-every-minutes must be >= 0, got {args.save_every}, {args.save_every_minutes}")
    check(args.stage_nums >= 1 and args.div > 0, "--stage-nums must be >= 1 and --div positive")
    check(DEVICE_PATTERN.match(str(args.device)) is not None,
           f"--device must be auto, cpu, cuda or cuda:N, got {args.device!r}")
    check(not (args.valid and not args.check_path), "--valid needs --check_path CHECKPOINT")
    check(not isinstance(args.pretrained, str) or os.path.isfile(args.pretrained),
           f"--pretrained {args.pretrained}: expected True/False or an existing torchvision ResNet state_dict file")
    check(args.dataset == "fake" or not os.path.isfile(args.data_dir),
           f"--data_dir {args.data_dir} is a file, not a folder: pass the folder that holds Cityscapes")
    args.task = "segmentation"  # stored in args.yaml and the checkpoints (models/tasks.py)
    args.resolved = True
    return args
