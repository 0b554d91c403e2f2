"""Checks and fills that every task's recipe applies to the flags it shares (lib/engine/cli.py add_run_flags)."""
import os
import re

from lib.engine.cli import AMP_MODES
from lib.errors import ConfigError

# The reference used 4 loader workers; fewer on a machine with fewer cores (more would only contend).
CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def fill(args, name, value):
    if getattr(args, name, None) is None:
        setattr(args, name, value)


def fill_recipe(args, recipes, common, kind, datasets):
    """Unset flags from recipes[args.dataset], then from common (every dataset's); one line for a dataset the task
    does not know (kind: e.g. "video", datasets: its names, in the order the help lists them)."""
    if args.dataset not in recipes:
        raise ConfigError(f"unknown {kind} dataset {args.dataset!r}; valid: {', '.join(datasets)}")
    for name, value in list(recipes[args.dataset].items()) + list(common.items()):
        fill(args, name, value)


def check(condition, message):
    if not condition:
        raise ConfigError(message)


def check_run_name(name):
    """--checkpoints is the name of one folder inside <output-dir>/<dataset>/<arch>, nothing else."""
    bad = (not name or name in (".", "..") or os.sep in name or (os.altsep and os.altsep in name)
           or name != name.strip() or "\0" in name)
    check(not bad, f"--checkpoints must be a single folder name (no path, not '.' or '..'), got {name!r}")


def check_output_dir(path):
    """--output-dir must be, or be creatable as, a folder: its nearest existing ancestor must be a folder."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    check(os.path.isdir(probe), f"--output-dir {path}: {probe} is a file, not a folder")


def check_schedule_and_mode(args):
    """The epoch tasks' checks of --div, --lr-steps, --amp, --device, --valid."""
    check(args.div > 0, f"--div must be positive, got {args.div}")
    check(list(args.lr_steps) == sorted(set(args.lr_steps)), f"--lr-steps must increase, got {args.lr_steps}")
    # In the reference a decay inside the warm-up was never applied; refuse it rather than guess.
    check(all(step >= args.warmup_epochs for step in args.lr_steps),
           f"--lr-steps {args.lr_steps} must not fall inside the {args.warmup_epochs} warm-up epochs")
    check(args.amp in AMP_MODES, f"--amp must be one of {', '.join(AMP_MODES)}, got {args.amp!r}")
    check(DEVICE_PATTERN.match(str(args.device)) is not None,
           f"--device must be auto, cpu, cuda or cuda:N, got {args.device!r}")
    check(not (args.valid and not args.check_path), "--valid needs --check_path CHECKPOINT")
