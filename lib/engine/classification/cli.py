"""Command line of train_val.py: the reference's flags (docs/classification.md, "Flags"), kept working, plus ours;
the flags every entry point shares come from lib.engine.cli.add_run_flags.

Flags whose default depends on the dataset (the recipe, lib/engine/classification/recipe.py) default to None
here, so that a value given on the command line or in --config is detectable and wins over the recipe.
"""
from lib.engine.cli import OneLineParser, add_run_flags, add_step_schedule_flags, bool_flag, parse_pretrained
from lib.engine.config import parse_flags
from lib.registry import NONLOCAL_BLOCKS, ORDER_BLOCKS


def _add_reference_flags(parser):
    ref = parser.add_argument_group("flags of the reference train_val.py (same names, now with their intended meaning)")
    ref.add_argument("-d", "--debug", action="store_true", help="debug mode: batch size 2 and 0 workers "
                     "unless given explicitly")
    ref.add_argument("-w", "--warmup", action="store_true", help="accepted for compatibility: warm-up is always on "
                     "(the reference forced it); --warmup-epochs 0 disables it")
    ref.add_argument("--data_dir", "--data-dir", dest="data_dir", default="./data",
                     help="dataset root: CIFAR batches in it, ImageNet under <data_dir>/imagenet (default ./data)")
    ref.add_argument("--dataset", default="imagenet", help="cifar10 | cifar100 | imagenet | imagefolder | fake "
                     "(default imagenet, as the reference)")
    ref.add_argument("--num_gpu", "--num-gpu", dest="num_gpu", type=int, default=1,
                     help="accepted, superseded: launch with torchrun --nproc_per_node N for several GPUs")
    ref.add_argument("--nl-nums", "--nl_nums", dest="nl_nums", type=int, default=None,
                     help="number of nonlocal blocks: preresnet 0 or 1, resnet 0, 1 or 5 (default 1)")
    ref.add_argument("--nl-type", "--nl_type", dest="nl_type", default=None,
                     help=f"{' | '.join(NONLOCAL_BLOCKS)} | none (default snl)")
    ref.add_argument("--order", type=int, default=None, metavar="K",
                     help=f"order of {' and '.join(ORDER_BLOCKS)}: Chebyshev order K / ARMA iterations T (default 2; "
                     "docs/spectral.md)")
    ref.add_argument("--stage-nums", "--stage_nums", dest="stage_nums", type=int, default=None,
                     help="units per nonlocal stage (default 1)")
    ref.add_argument("--div", type=float, default=None, help="channel reduction C' = int(C / div) (default 2)")
    ref.add_argument("--nl_layer", "--nl-layer", dest="nl_layer", nargs="+", default=None, metavar="STAGE",
                     help="preresnet stage(s) that get a block: 3, '1,2' or 1 2 (default 1)")
    bool_flag(ref, "--is_sys", "--is-sys", default=None, help="symmetric affinity (switch; default: the block's own)")
    bool_flag(ref, "--is_norm", "--is-norm", default=None, help="normalized ReLU affinity (switch; default: the "
               "block's own). Pass --is_norm --is_sys to reproduce the reference's PreResNet runs")
    bool_flag(ref, "--output-relu", "--output_relu", default=None, help="ReLU after each unit of a stage block: Y = "
               "X + relu(BN(...)) (default: resnet False, its blocks start as the identity and learn; preresnet the "
               "block's own. True for resnet: BN weight 1, as with the ReLU from 0 a block never learns; "
               "docs/blocks.md)")
    ref.add_argument("--pretrained", type=parse_pretrained, default=False, metavar="BOOL|PATH",
                     help="False (default), True (torchvision ImageNet weights, resnet only) or a state_dict file")
    ref.add_argument("--backbone", default=None, help="preresnet | resnet (default: preresnet for CIFAR-like "
                     "recipes, resnet for ImageNet)")
    ref.add_argument("--arch", default=None, help="depth: preresnet 20, 56, 110; resnet 50, 101, 152 "
                     "(default 20 / 50 by recipe)")
    ref.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=None,
                     help="base learning rate (recipe: 0.1 CIFAR, 0.01 ImageNet)")
    bool_flag(ref, "--isresume", default=False, help="resume from --resumename (reference spelling of --resume)")
    ref.add_argument("--resumename", default="", help="checkpoint file inside the run folder, for --isresume")


def _add_recipe_flags(parser):
    recipe = parser.add_argument_group("training recipe (unset = the dataset's recipe, docs/classification.md, "
                                       "\"Training\")")
    recipe.add_argument("--recipe", default=None, choices=("cifar", "imagenet"),
                        help="which dataset recipe fills unset flags (default: by --dataset)")
    recipe.add_argument("--epochs", type=int, default=None, help="total epochs including warm-up "
                        "(recipe: 300 + warm-up CIFAR, 100 + warm-up ImageNet)")
    recipe.add_argument("-b", "--batch-size", "--batch_size", dest="batch_size", type=int, default=None,
                        help="images per process and iteration (recipe: 128 CIFAR, 100 ImageNet)")
    add_step_schedule_flags(recipe, lr_steps="counted from the run's start; recipe: 150 250 CIFAR, 31 61 81 "
                            "ImageNet, shifted by the warm-up", warmup="recipe 10; 0 = none")
    recipe.add_argument("--eval-freq", "--eval_freq", dest="eval_freq", type=int, default=None,
                        help="evaluate every N epochs and at the last one (recipe 5)")
    recipe.add_argument("--weight-decay", "--wd", dest="weight_decay", type=float, default=1e-4,
                        help="SGD weight decay (default 1e-4)")
    recipe.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    recipe.add_argument("--seed", type=int, default=None, help="random seed (recipe 67, as the reference)")
    recipe.add_argument("--hflip", type=float, default=0.5, metavar="P",
                        help="probability of a horizontal flip of a training image (default 0.5, as the reference; "
                        "0 = never, for data whose class changes in a mirror: digits, text, signs)")
    recipe.add_argument("--input-size", "--input_size", dest="input_size", type=int, default=None,
                        help="network input side (default: the dataset's, 32 CIFAR / 224 ImageNet)")


def get_args_parser(add_help=True):
    parser = OneLineParser(prog="train_val.py", add_help=add_help,
                           description="Train / evaluate PreResNet and ResNet with nonlocal blocks (SNL and others)")
    _add_reference_flags(parser)
    _add_recipe_flags(parser)
    run = add_run_flags(parser, print_freq=200)
    run.add_argument("--no-download", dest="download", action="store_false",
                     help="never download CIFAR (fail if it is not under --data_dir)")
    return parser


def parse_args(argv=None):
    """Flags over --config over parser defaults; args.explicit lists the flags given (the recipe fills the rest
    in resolve_args, called by main)."""
    return parse_flags(argv, get_args_parser)
