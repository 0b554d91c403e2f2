"""The reference's per-dataset training recipe (docs/classification.md, "Training"), applied to flags left unset.

The reference overwrote --lr, the epochs and the batch size inside main(); here a value given on the command
line or in --config wins, and only unset (None) values take the recipe's. Epoch counts include the warm-up:
CIFAR runs 300 + 10 epochs with decays at 150 + 10 and 250 + 10, exactly as the reference's shifted schedule.
"""
import math
import os

from lib.engine.checks import CPUS, check, check_output_dir, check_run_name, check_schedule_and_mode, fill
from lib.engine.cli import parse_stages
from lib.errors import ConfigError
from lib.registry import DEFAULT_ORDER, ORDER_BLOCKS

RECIPES = {
    # epochs and lr_steps are counted without the warm-up; resolve_args shifts them by --warmup-epochs.
    "cifar": dict(batch_size=128, lr=0.1, epochs=300, lr_steps=(150, 250), warmup_epochs=10, eval_freq=5,
                  backbone="preresnet", arch="20", save_every_minutes=0),
    "imagenet": dict(batch_size=100, lr=0.01, epochs=100, lr_steps=(31, 61, 81), warmup_epochs=10, eval_freq=5,
                     backbone="resnet", arch="50", save_every_minutes=30),
}
DATASET_RECIPE = {"cifar10": "cifar", "cifar100": "cifar", "fake": "cifar", "imagenet": "imagenet"}
# imagefolder holds any images: its recipe (and so its default backbone) follows --input-size (default 224).
SMALL_IMAGES = 64
COMMON_DEFAULTS = dict(seed=67, workers=min(4, CPUS), nl_type="snl", nl_nums=1, stage_nums=1, div=2, nl_layer=["1"])
# The reference's --debug: tiny batches, no worker processes.
DEBUG_DEFAULTS = dict(batch_size=2, workers=0)










def _check_data_dir(args):
    """A --data_dir that is a file would otherwise read as a missing dataset (or a failed download)."""
    if args.dataset != "fake" and os.path.isfile(args.data_dir):
        raise ConfigError(f"--data_dir {args.data_dir} is a file, not a folder: pass the folder that holds the "
                          f"dataset")


def _check_order(args):
    """--order is checked here, so that its error names the flag (the model builder only knows "order")."""
    if args.order is None:
        return
    check(args.order >= 1, f"--order must be a positive integer, got {args.order}")
    check(args.nl_type in ORDER_BLOCKS, f"--order applies to {' and '.join(ORDER_BLOCKS)} only, not to --nl-type "
           f"{args.nl_type}")


def _pick_recipe(args):
    """--recipe, else the dataset's; imagefolder by its --input-size (32-64 px: the CIFAR recipe and PreResNet-20,
    larger: the ImageNet recipe and ResNet-50)."""
    if args.recipe:
        return args.recipe
    if args.dataset == "imagefolder":
        return "cifar" if args.input_size is not None and args.input_size <= SMALL_IMAGES else "imagenet"
    return DATASET_RECIPE.get(args.dataset, "imagenet")


def recipe_line(args):
    """The log line saying which recipe filled the unset flags, and why."""
    recipe = RECIPES[args.recipe]
    if "recipe" in (getattr(args, "explicit", None) or ()):
        why = "--recipe"
    elif args.dataset == "imagefolder":
        why = f"imagefolder at {args.input_size or 224} px; --recipe to choose"
    else:
        why = f"--dataset {args.dataset}"
    return (f"=> recipe {args.recipe} ({why}): unset flags from it, e.g. backbone {recipe['backbone']}-"
            f"{recipe['arch']}, batch {recipe['batch_size']}, lr {recipe['lr']:g}")




def _validate(args):
    for flag, value in (("--lr", args.lr), ("--lr-gamma", args.lr_gamma), ("--weight-decay", args.weight_decay),
                        ("--momentum", args.momentum), ("--div", args.div), ("--hflip", args.hflip)):
        check(math.isfinite(value), f"{flag} must be a finite number, got {value}")
    check(args.epochs >= 1, f"--epochs must be >= 1, got {args.epochs}")
    check(args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}")
    check(args.lr > 0, f"--lr must be positive, got {args.lr}")
    check(args.lr_gamma > 0, f"--lr-gamma must be positive, got {args.lr_gamma}")
    check(0 <= args.momentum < 1, f"--momentum must be in [0, 1), got {args.momentum}")
    check(args.weight_decay >= 0, f"--weight-decay must be >= 0, got {args.weight_decay}")
    check(0 <= args.hflip <= 1, f"--hflip is a probability in [0, 1], got {args.hflip}")
    check_run_name(args.checkpoints)
    check_output_dir(args.output_dir)
    check(args.warmup_epochs >= 0, f"--warmup-epochs must be >= 0, got {args.warmup_epochs}")
    check(args.eval_freq >= 1, f"--eval-freq must be >= 1, got {args.eval_freq}")
    check(args.print_freq >= 1, f"--print-freq must be >= 1, got {args.print_freq}")
    check(args.workers >= 0, f"--workers must be >= 0, got {args.workers}")
    check(args.seed >= 0, f"--seed must be >= 0, got {args.seed}")
    check(args.keep_checkpoints >= 0, f"--keep-checkpoints must be >= 0, got {args.keep_checkpoints}")
    check(args.save_every >= 0 and args.save_every_minutes >= 0,
           f"--save-every and --save-every-minutes must be >= 0, got {args.save_every}, {args.save_every_minutes}")
    check(args.input_size is None or args.input_size >= 1, f"--input-size must be >= 1, got {args.input_size}")
    check(args.nl_nums >= 0, f"--nl-nums must be >= 0, got {args.nl_nums}")
    check(args.stage_nums >= 1, f"--stage-nums must be >= 1, got {args.stage_nums}")
    check_schedule_and_mode(args)
    _check_order(args)
    _check_data_dir(args)
    check(not args.pretrained or args.backbone == "resnet", "--pretrained loads torchvision ImageNet weights into "
           "--backbone resnet only; to start from one of our checkpoints use --resume PATH")
    pretrained_file = isinstance(args.pretrained, str)
    check(not pretrained_file or os.path.isfile(args.pretrained),
           f"--pretrained {args.pretrained}: expected True/False or an existing state_dict file")


def _resolve_resume(args):
    """--isresume True --resumename NAME (the reference's spelling) becomes --resume <run folder>/NAME later."""
    if args.isresume and args.resume:
        raise ConfigError("give either --resume or --isresume/--resumename, not both")
    if args.resumename and not args.isresume:
        raise ConfigError("--resumename needs --isresume (or use --resume PATH)")
    if args.isresume and not args.resumename:
        args.resume = "auto"  # nothing named: the run folder's last checkpoint is the only sensible reading


def _default_run_name(args):
    if not (args.nl_nums and args.nl_type):
        return "base"
    order = args.order if args.nl_type in ORDER_BLOCKS and args.order is not None else DEFAULT_ORDER
    return args.nl_type + (str(order) if order != DEFAULT_ORDER else "")


def resolve_args(args):
    """Fill unset flags from the recipe of args.dataset, normalize spellings, validate; returns args (changed)."""
    if getattr(args, "resolved", False):
        return args
    from lib.data import DATASETS  # imported here so that parsing --help stays light
    if args.dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {args.dataset!r}; valid: {', '.join(DATASETS)}")
    args.recipe = _pick_recipe(args)
    recipe = RECIPES[args.recipe]
    if args.debug:
        for name, value in DEBUG_DEFAULTS.items():
            fill(args, name, value)
    for name in ("batch_size", "lr", "warmup_epochs", "eval_freq", "backbone", "arch", "save_every_minutes"):
        fill(args, name, recipe[name])
    for name, value in COMMON_DEFAULTS.items():
        fill(args, name, value)
    fill(args, "epochs", recipe["epochs"] + args.warmup_epochs)
    fill(args, "lr_steps", [step + args.warmup_epochs for step in recipe["lr_steps"]])
    args.lr_steps = [int(step) for step in args.lr_steps]
    args.arch = str(args.arch)
    args.nl_layer = parse_stages(args.nl_layer)
    if str(args.nl_type).lower() in ("none", "base"):
        args.nl_type, args.nl_nums = None, 0
    # The reference's default was "snl" whatever the block; here the block's name (a deviation, see docs/deviations.md),
    # with its order when not the default one (cheb3), so that runs of different orders never share a folder.
    fill(args, "checkpoints", _default_run_name(args))
    if float(args.div).is_integer():
        args.div = int(args.div)  # so build_args and file names read 2, not 2.0
    _validate(args)
    _resolve_resume(args)
    args.task = "classification"  # stored in args.yaml and the checkpoints (models/tasks.py)
    args.resolved = True
    return args
