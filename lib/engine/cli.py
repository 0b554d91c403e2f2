"""Command line of train_val.py: the reference's flags (docs/classification.md, "Flags"), kept working, plus ours.

Flags whose default depends on the dataset (the recipe, lib/engine/recipe.py) default to None here, so that a value
given on the command line or in --config is detectable and wins over the recipe (the reference overwrote them).
No flag uses argparse's bool type (bool("False") is True): bool-ish flags go through parse_bool.
"""
import argparse

from lib.engine.resume_check import add_allow_changed_flag
from lib.errors import ConfigError
from lib.registry import NONLOCAL_BLOCKS, ORDER_BLOCKS

TRUE_WORDS = ("true", "yes", "y", "on", "1")
FALSE_WORDS = ("false", "no", "n", "off", "0")
AMP_MODES = ("off", "bf16", "fp16")
LR_SCALES = ("none", "linear")


def parse_bool(text):
    """'True'/'yes'/'1' -> True, 'False'/'no'/'0' -> False (any case); anything else is an error."""
    if isinstance(text, bool):
        return text
    word = str(text).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False, yes/no, 1/0), got {text!r}")


def parse_pretrained(text):
    """--pretrained: a boolean word (False = train from scratch) or the path of a torchvision-format state_dict."""
    try:
        return parse_bool(text)
    except argparse.ArgumentTypeError:
        return str(text)


def parse_stages(values):
    """--nl_layer values -> ['1', '3']: accepts '3', '1,2', '1 2' (several words) and the reference's '12'.

    The reference declared the flag type=list, which split a word into characters; a digit string is therefore
    read the same way here (stages are single digits), so its command lines keep their meaning.
    """
    items = [values] if isinstance(values, (str, int)) else list(values)
    stages = []
    for item in items:
        for token in str(item).replace(",", " ").split():
            if not token.isdigit():
                raise ConfigError(f"--nl_layer expects stage numbers such as 3, '1,2' or '1 2', got {item!r}")
            stages.extend(token)
    if not stages:
        raise ConfigError("--nl_layer needs at least one stage number")
    return sorted(set(stages), key=stages.index)


class OneLineParser(argparse.ArgumentParser):
    """argparse prints its usage block before an error; here an error is one line on stderr, exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _bool_flag(group, *names, default, help):
    # A bare flag means True, and the reference's "--flag True" / "--flag False" spelling still works.
    group.add_argument(*names, nargs="?", const=True, default=default, type=parse_bool, metavar="BOOL", help=help)


def _add_reference_flags(parser):
    ref = parser.add_argument_group("flags of the reference train_val.py (same names, now with their intended meaning)")
    ref.add_argument("-d", "--debug", action="store_true", help="debug mode: batch size 2 and 0 workers "
                     "unless given explicitly")
    ref.add_argument("-w", "--warmup", action="store_true", help="accepted for compatibility: warm-up is always on "
                     "(the reference forced it); --warmup-epochs 0 disables it")
    ref.add_argument("-p", "--print-freq", "--print_freq", dest="print_freq", type=int, default=200,
                     metavar="N", help="progress line every N iterations (default 200)")
    ref.add_argument("--data_dir", "--data-dir", dest="data_dir", default="./data",
                     help="dataset root: CIFAR batches in it, ImageNet under <data_dir>/imagenet (default ./data)")
    ref.add_argument("--dataset", default="imagenet", help="cifar10 | cifar100 | imagenet | imagefolder | fake "
                     "(default imagenet, as the reference)")
    _bool_flag(ref, "--valid", default=False, help="only evaluate the checkpoint --check_path and exit")
    ref.add_argument("--checkpoints", default=None, help="run folder name (one folder name, no path): outputs go "
                     "to <output-dir>/<dataset>/<arch>/<checkpoints> (default: the block's name, e.g. nl for "
                     "--nl-type nl, base without blocks; the reference's default was always snl)")
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
    _bool_flag(ref, "--is_sys", "--is-sys", default=None, help="symmetric affinity (switch; default: the block's own)")
    _bool_flag(ref, "--is_norm", "--is-norm", default=None, help="normalized ReLU affinity (switch; default: the "
               "block's own). Pass --is_norm --is_sys to reproduce the reference's PreResNet runs")
    _bool_flag(ref, "--output-relu", "--output_relu", default=None, help="ReLU after each unit of a stage block: Y = "
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
    _bool_flag(ref, "--isresume", default=False, help="resume from --resumename (reference spelling of --resume)")
    ref.add_argument("--resumename", default="", help="checkpoint file inside the run folder, for --isresume")
    ref.add_argument("--check_path", "--check-path", dest="check_path", default="",
                     help="checkpoint to evaluate with --valid (ours or the reference's)")


def _add_recipe_flags(parser):
    recipe = parser.add_argument_group(
        "training recipe (unset = the dataset's recipe, docs/classification.md, \"Training\")")
    recipe.add_argument("--config", default=None, metavar="FILE.yaml",
                        help="YAML file of flag values (keys = flag names); command-line flags win")
    recipe.add_argument("--recipe", default=None, choices=("cifar", "imagenet"),
                        help="which dataset recipe fills unset flags (default: by --dataset)")
    recipe.add_argument("--epochs", type=int, default=None, help="total epochs including warm-up "
                        "(recipe: 300 + warm-up CIFAR, 100 + warm-up ImageNet)")
    recipe.add_argument("-b", "--batch-size", "--batch_size", dest="batch_size", type=int, default=None,
                        help="images per process and iteration (recipe: 128 CIFAR, 100 ImageNet)")
    recipe.add_argument("--lr-steps", "--lr_steps", dest="lr_steps", type=int, nargs="+", default=None,
                        metavar="EPOCH", help="0-based epochs where the lr is multiplied by --lr-gamma, counted "
                        "from the run's start (recipe: 150 250 CIFAR, 31 61 81 ImageNet, shifted by the warm-up)")
    recipe.add_argument("--lr-gamma", "--lr_gamma", dest="lr_gamma", type=float, default=0.1,
                        help="lr decay factor at each step (default 0.1)")
    recipe.add_argument("--warmup-epochs", "--warmup_epochs", dest="warmup_epochs", type=int, default=None,
                        help="linear warm-up epochs from lr * gamma^len(lr-steps) to lr (recipe 10; 0 = none)")
    recipe.add_argument("--lr-scale", "--lr_scale", dest="lr_scale", choices=LR_SCALES, default="none",
                        help="linear: multiply lr by global batch / recipe batch (default none: lr as given)")
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


def add_save_flags(group, recipes="30 for ImageNet and Cityscapes, off for CIFAR and fake"):
    """--save-every / --save-every-minutes: checkpoints between iterations (every entry point; recipes: what the
    entry point's recipes set --save-every-minutes to, for the help)."""
    group.add_argument("--save-every", "--save_every", dest="save_every", type=int, default=0, metavar="N",
                       help="also checkpoint every N training iterations (0 = off, the default); a signal "
                       "(SIGTERM, SIGUSR1, SIGINT) always checkpoints and stops with exit status 75")
    group.add_argument("--save-every-minutes", "--save_every_minutes", dest="save_every_minutes", type=float,
                       default=None, metavar="M", help="also checkpoint when M minutes have passed since the last "
                       f"checkpoint (0 = off; recipe: {recipes})")
    group.add_argument("--dist-timeout", "--dist_timeout", dest="dist_timeout", type=float, default=60, metavar="MIN",
                       help="minutes a process may wait for the others (torchrun / srun) before the run fails, e.g. "
                       "while local rank 0 indexes a large dataset (default 60; torch's NCCL default is 10)")


def _add_run_flags(parser):
    run = parser.add_argument_group("run, output and performance")
    run.add_argument("-j", "--workers", type=int, default=None, help="data loader processes per process "
                     "(default 4, the reference's, or fewer on a machine with fewer cores; 0 in --debug)")
    run.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto: cuda if available)")
    run.add_argument("--output-dir", "--output_dir", dest="output_dir", default="save_model",
                     help="root of the run folders (default save_model)")
    run.add_argument("--resume", default="", metavar="auto|PATH",
                     help="auto: continue the run folder's last checkpoint (fresh start if none); PATH: that file")
    add_allow_changed_flag(run)
    run.add_argument("--keep-checkpoints", "--keep_checkpoints", dest="keep_checkpoints", type=int, default=1,
                     help="how many per-epoch checkpoints to keep, newest first (0 = all; default 1)")
    add_save_flags(run)
    run.add_argument("--no-download", dest="download", action="store_false",
                     help="never download CIFAR (fail if it is not under --data_dir)")
    run.add_argument("--deterministic", action="store_true",
                     help="cudnn.deterministic (reproducible GPU runs); otherwise cudnn.benchmark")
    run.add_argument("--amp", choices=AMP_MODES, default="off", help="mixed precision autocast: off | bf16 | fp16 "
                     "(fp16 uses a GradScaler; on the CPU both are slower than off unless the CPU has native bf16)")
    run.add_argument("--channels-last", "--channels_last", dest="channels_last", action="store_true",
                     help="channels-last memory format")
    run.add_argument("--compile", action="store_true", help="torch.compile the model (falls back to eager, "
                     "with a warning, where it fails)")
    run.add_argument("--sync-bn", "--sync_bn", dest="sync_bn", action="store_true",
                     help="synchronize BatchNorm statistics across processes (torchrun)")


def get_args_parser(add_help=True):
    parser = OneLineParser(prog="train_val.py", add_help=add_help,
                           description="Train / evaluate PreResNet and ResNet with nonlocal blocks (SNL and others)")
    _add_reference_flags(parser)
    _add_recipe_flags(parser)
    _add_run_flags(parser)
    return parser
