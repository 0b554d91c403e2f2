"""The command line every entry point shares: add_run_flags (run folder, resume, checkpoints, device and
performance), the one-line parser and the value parsers. Each task adds its own flags (lib/engine/<task>/cli.py).

Flags whose default depends on the dataset (a task's recipe) default to None, so that a value given on the command
line or in --config is detectable and wins over the recipe (the reference overwrote them). No flag uses argparse's
bool type (bool("False") is True): bool-ish flags go through parse_bool.
"""
import argparse

from lib.engine.resume_check import add_allow_changed_flag
from lib.errors import ConfigError

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


def bool_flag(group, *names, default, help):
    # A bare flag means True, and the reference's "--flag True" / "--flag False" spelling still works.
    group.add_argument(*names, nargs="?", const=True, default=default, type=parse_bool, metavar="BOOL", help=help)


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




def add_step_schedule_flags(group, lr_steps, warmup, weight_decay=None, eval_freq=None):
    """The warm-up / step lr schedule of the epoch tasks (lib.engine.schedule.WarmupStepSchedule): --lr-steps,
    --lr-gamma, --warmup-epochs, --lr-scale; lr_steps, warmup: their defaults, for the help. With weight_decay and
    eval_freq (their help texts) also --weight-decay, --eval-freq and --seed, for a task whose recipe fills them
    (default None = the recipe's)."""
    group.add_argument("--lr-steps", "--lr_steps", dest="lr_steps", type=int, nargs="+", default=None,
                       metavar="EPOCH", help=f"0-based epochs where the lr is multiplied by --lr-gamma ({lr_steps})")
    group.add_argument("--lr-gamma", "--lr_gamma", dest="lr_gamma", type=float, default=0.1,
                       help="lr decay factor at each step (default 0.1)")
    group.add_argument("--warmup-epochs", "--warmup_epochs", dest="warmup_epochs", type=int, default=None,
                       help=f"linear warm-up epochs from lr * gamma^len(lr-steps) to lr ({warmup})")
    group.add_argument("--lr-scale", "--lr_scale", dest="lr_scale", choices=LR_SCALES, default="none",
                       help="linear: multiply lr by global batch / recipe batch (default none: lr as given)")
    if weight_decay is not None:
        group.add_argument("--weight-decay", "--wd", dest="weight_decay", type=float, default=None, help=weight_decay)
        group.add_argument("--eval-freq", "--eval_freq", dest="eval_freq", type=int, default=None, help=eval_freq)
        group.add_argument("--seed", type=int, default=None, help="random seed (default 1)")


def add_run_flags(parser, print_freq, steps="per-epoch",
                  save_recipes="30 for ImageNet and Cityscapes, off for CIFAR and fake", checkpoints=None,
                  model_dir="<arch>"):
    """The flags every entry point has, in one group: --config, --valid / --check_path, the run folder, resume,
    checkpoints, progress lines, loader workers, device and performance. print_freq, checkpoints: the entry point's
    defaults (checkpoints None: the block's name); steps, save_recipes, model_dir: words for the help."""
    run = parser.add_argument_group("run, output and performance")
    run.add_argument("--config", default=None, metavar="FILE.yaml",
                     help="YAML file of flag values (keys = flag names); command-line flags win")
    bool_flag(run, "--valid", default=False, help="only evaluate the checkpoint --check_path and exit")
    run.add_argument("--check_path", "--check-path", dest="check_path", default="",
                     help="checkpoint to evaluate with --valid")
    run.add_argument("--checkpoints", default=checkpoints, help=f"run folder name (one folder name, no path): outputs "
                     f"go to <output-dir>/<dataset>/{model_dir}/<checkpoints> (default: "
                     f"{checkpoints or 'the block name, base without blocks'})")
    run.add_argument("--output-dir", "--output_dir", dest="output_dir", default="save_model",
                     help="root of the run folders (default save_model)")
    run.add_argument("--resume", default="", metavar="auto|PATH",
                     help="auto: continue the run folder's last checkpoint (fresh start if none); PATH: that file")
    add_allow_changed_flag(run)
    run.add_argument("--keep-checkpoints", "--keep_checkpoints", dest="keep_checkpoints", type=int, default=1,
                     help=f"how many {steps} checkpoints to keep, newest first (0 = all; default 1)")
    add_save_flags(run, save_recipes)
    run.add_argument("-p", "--print-freq", "--print_freq", dest="print_freq", type=int, default=print_freq,
                     metavar="N", help=f"progress line every N iterations (default {print_freq})")
    run.add_argument("-j", "--workers", type=int, default=None, help="data loader processes per process "
                     "(default min(4, cores); 0 in train_val.py's --debug)")
    run.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto: cuda if available)")
    run.add_argument("--deterministic", action="store_true",
                     help="deterministic algorithms (torch.use_deterministic_algorithms, cuDNN, cuBLAS: "
                     "reproducible GPU runs, slower); otherwise cudnn.benchmark")
    run.add_argument("--amp", choices=AMP_MODES, default="off", help="mixed precision autocast: off | bf16 | fp16 "
                     "(fp16 uses a GradScaler; on the CPU both are slower than off unless the CPU has native bf16)")
    run.add_argument("--channels-last", "--channels_last", dest="channels_last", action="store_true",
                     help="channels-last memory format (3-D for videos)")
    run.add_argument("--compile", action="store_true", help="torch.compile the model (falls back to eager, "
                     "with a warning, where it fails)")
    run.add_argument("--sync-bn", "--sync_bn", dest="sync_bn", action="store_true",
                     help="synchronize BatchNorm statistics across processes (torchrun)")
    return run
