"""Bookkeeping of one training run, whatever its task and step unit: its folder, the model's arguments and their
checks, what to resume from, the best of the task's metric, the checkpoint dict and what a resume restores."""
import math
import os
from dataclasses import dataclass
from typing import Optional

import torch

from lib.engine.checkpoint import BEST_NAME, capture_rng, load_checkpoint, model_args_mismatch, save_from_main
from lib.engine.distributed import gather_objects
from lib.engine.preemption import EpochProgress
from lib.engine.resume_check import check_run_folder
from lib.errors import ConfigError
from models import build_model, load_state_dict_checked
from models.tasks import require_task


def run_folder(args, model_dir=None):
    """<output-dir>/<dataset>/<model_dir>/<checkpoints>; model_dir defaults to <backbone><arch> (classification
    passes <arch>, the reference's layout)."""
    return os.path.join(args.output_dir, args.dataset, model_dir or f"{args.backbone}{args.arch}", args.checkpoints)


# Model flags a task may not have, or leave unset (None: the builder's default).
OPTIONAL_MODEL_FLAGS = ("nl_layer", "order", "shortcut_type")


def model_kwargs(args, num_classes, pretrained=None, **task_kwargs):
    """The model builder's keyword arguments from the flags (models.build_model, models.segmentation's
    build_segmentor with the task's task_kwargs); --nl-nums 0 means no block."""
    nl_nums = getattr(args, "nl_nums", None)
    kwargs = dict(backbone=args.backbone, arch=args.arch, num_classes=num_classes,
                  nl_type=args.nl_type if nl_nums is None or nl_nums else None, stage_num=args.stage_nums,
                  div=args.div, is_sys=args.is_sys, is_norm=args.is_norm, output_relu=args.output_relu,
                  pretrained=pretrained or None, **task_kwargs)
    if nl_nums is not None:
        kwargs["nl_nums"] = nl_nums
    for name in OPTIONAL_MODEL_FLAGS:
        if getattr(args, name, None) is not None:
            kwargs[name] = getattr(args, name)
    return kwargs


def check_model_flags(build, kwargs):
    """Fail on a bad model flag before any data is read: building on the meta device costs no memory or time."""
    with torch.device("meta"):
        build(**kwargs)


def resume_source(args, run_dir, log, files):
    """The checkpoint to resume from, or None (files: the run's EpochFiles or IterationFiles). Refuses to start
    over, or resume into, a run folder whose checkpoints would be overwritten without the user asking for it."""
    if getattr(args, "isresume", False) and args.resumename:
        path = os.path.join(run_dir, args.resumename)
        if not os.path.isfile(path):
            raise ConfigError(f"--resumename {args.resumename}: no such file in the run folder {run_dir}")
        return path
    if args.resume == "auto":
        path = files.latest(run_dir)
        if path is None and files.unreadable(run_dir):
            # Starting over would overwrite them: the user has to decide what to do with those files.
            raise ConfigError(f"--resume auto: no readable checkpoint in {run_dir} (damaged files?): move them "
                              f"away, or choose a new --checkpoints name")
        if path is None:
            log.warn(f"--resume auto: no checkpoint in {run_dir}, starting from scratch")
        elif os.path.basename(path) == BEST_NAME:
            log.warn(f"--resume auto: no newer per-epoch checkpoint in {run_dir}, continuing from {BEST_NAME}")
        return path
    check_run_folder(run_dir, args.resume, files.has_any(run_dir))
    return args.resume or None


@dataclass(frozen=True)
class Tracked:
    """A metric whose best value a run tracks: its key in the evaluation's stats, its checkpoint keys (value, step),
    what the checkpoint stores for "none yet", and how the resume line shows it."""
    stat: str
    key: str
    step_key: str
    none_stored: Optional[float]
    label: str
    fmt: str


class BestTracker:
    """The best value of each tracked metric so far (higher is better; NaN never is) with its step, and the latest
    evaluation. The first metric picks model_best.pth.tar; the others are tracked on their own, as the reference
    tracked top-5 beside top-1."""

    def __init__(self, metrics, unit, values=None, steps=None, last=None):
        self.metrics, self.unit = tuple(metrics), unit
        self.values = dict(values or {m.stat: None for m in self.metrics})
        self.steps = dict(steps or {m.stat: 0 for m in self.metrics})
        self.last = last

    def value(self, stat=None):
        return self.values[stat or self.metrics[0].stat]

    def step(self, stat=None):
        return self.steps[stat or self.metrics[0].stat]

    def update(self, step, stats):
        """Record an evaluation after `step` finished steps; True if the first metric reached a new best."""
        self.last = dict(stats, **{self.unit: step})
        improved = {}
        for metric in self.metrics:
            value, best = stats[metric.stat], self.values[metric.stat]
            improved[metric.stat] = not math.isnan(value) and (best is None or value > best)
            if improved[metric.stat]:
                self.values[metric.stat], self.steps[metric.stat] = value, step
        return improved[self.metrics[0].stat]

    def checkpoint_entries(self):
        entries = {"last_eval": self.last}
        for metric in self.metrics:
            value = self.values[metric.stat]
            entries[metric.key] = value if value is not None else metric.none_stored
            entries[metric.step_key] = self.steps[metric.stat]
        return entries

    def restored(self, checkpoint):
        """This tracker with the state of checkpoint (ours, or the reference's: best_prec1 only, a tensor there)."""
        values, steps = {}, {}
        for metric in self.metrics:
            value, step = checkpoint.get(metric.key), checkpoint.get(metric.step_key)
            # 0 with step 0 is "no evaluation yet"; the reference's files carry no step (and a tensor).
            none_yet = value is None or (float(value) == 0 and step == 0)
            values[metric.stat], steps[metric.stat] = None if none_yet else float(value), int(step or 0)
        return BestTracker(self.metrics, self.unit, values, steps, checkpoint.get("last_eval"))

    def resume_line(self):
        """The bests so far, or "no evaluation yet" (not a best of 0.000 at step 0, which none reached)."""
        if all(self.values[m.stat] is None for m in self.metrics):
            return "no evaluation yet"
        return ", ".join(f"best {m.label} {self.values[m.stat] or 0:{m.fmt}} ({self.unit} {self.steps[m.stat]})"
                         for m in self.metrics)


def save_checkpoint(files, run_dir, finished, is_best, model, optimizer, scaler, schedule, best, args, ctx, log,
                    pending_eval=None, progress=None):
    """Write the checkpoint of `finished` steps (files: the run's EpochFiles or IterationFiles; and
    model_best.pth.tar if is_best) from rank 0; returns its path in every process. Every process calls it (it
    gathers their states).

    pending_eval (epochs): the epoch's training record (train_loss, train_top1, lr, time) when its due evaluation
    was not run (it failed on bad input, or a signal stopped the run first); a resumed run evaluates it first.
    progress: this process's EpochProgress since the last step's checkpoint (inside an epoch, or between
    evaluations); every process's is stored, and a resumed run continues exactly there.

    The RNG states are gathered from every process at this point, which is exactly where training continues, so a
    resumed run draws the same random numbers as an uninterrupted one. model_best (a hard link to the same file)
    is renamed into place first: a kill in between leaves a best that the resumed run rewrites, never a best older
    than what the last checkpoint claims. Older files are pruned only once the new one is complete and renamed.
    A failed write (OSError: full disk...) leaves no partial file and raises WriteFailed in every process.
    """
    rng_states = gather_objects(ctx, capture_rng(ctx.device))
    progress_states = gather_objects(ctx, progress.state_dict()) if progress is not None else None

    def contents():
        return {
            "model_args": dict(model.build_args), "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None, "lr_schedule": schedule.state_dict(),
            "rng_states": rng_states, "world_size": ctx.world_size,
            "args": {key: value for key, value in vars(args).items() if key != "resolved"},
            files.progress_key: progress_states, **files.entries(finished, progress, schedule, pending_eval),
            **best.checkpoint_entries(),
        }

    path = files.path(run_dir, finished, progress)
    return save_from_main(ctx, log, run_dir, path, is_best, contents, lambda: files.latest(run_dir),
                          lambda: files.prune(run_dir, path, progress))


def resumed_progress(checkpoint, path, ctx, args, files):
    """This process's EpochProgress since the checkpoint's last full step (inside an epoch, or between
    evaluations), or None. The position counts iterations of this many processes and samples each: those must not
    change."""
    states = checkpoint.get(files.progress_key)
    if not states:
        return None
    saved = (checkpoint.get("world_size"), (checkpoint.get("args") or {}).get("batch_size"))
    if saved != (ctx.world_size, args.batch_size):
        raise ConfigError(f"{path} was written {files.stopped_inside} by {saved[0]} process(es) of batch {saved[1]}: "
                          f"continue it with the same (this run: {ctx.world_size} x {args.batch_size}){files.fallback}")
    return EpochProgress.from_state(states[ctx.rank])


def check_requested_model(saved, path, args, requested_kwargs, build=build_model):
    """--valid: refuse, in one line, model flags given on the command line (args.explicit) that ask for another
    model than the checkpoint's stored arguments `saved` (flags not given take the checkpoint's)."""
    given = set(getattr(args, "explicit", None) or ())
    with torch.device("meta"):  # only for the canonical form of what the flags ask for; no memory used
        requested = build(**requested_kwargs).build_args
    asked = [key for key in requested if {"stage_num": "stage_nums"}.get(key, key) in given]
    conflicts = model_args_mismatch({key: saved.get(key) for key in asked}, {key: requested[key] for key in asked})
    if conflicts:
        raise ConfigError(f"{path} holds another model than the flags ask for: {conflicts}")


def checkpoint_to_validate(args, task, log):
    """--valid's checkpoint (--check_path), loaded, after one line each for a file of another task or another
    dataset than --dataset."""
    log.heading("=> validation mode")
    checkpoint = load_checkpoint(args.check_path)
    require_task(checkpoint, args.check_path, task)
    check_dataset(checkpoint, args.check_path, args.dataset)
    return checkpoint


def check_dataset(checkpoint, path, dataset):
    """A checkpoint trained on another dataset (e.g. a CIFAR-100 model on CIFAR-10) is refused: its class indices
    mean other classes. The reference's checkpoints do not say their dataset and pass."""
    saved = checkpoint.get("dataset") or (checkpoint.get("args") or {}).get("dataset")
    if saved and saved != dataset:
        raise ConfigError(f"{path} was trained on {saved}, not {dataset}: pass --dataset {saved} (its classes are "
                          f"not {dataset}'s)")


def load_resumed_weights(checkpoint, path, model, load=load_state_dict_checked):
    """The checkpoint's weights into model (on the CPU, before any wrapping) with load(model, state_dict), after
    checking it is the same model."""
    saved = checkpoint.get("model_args")
    if saved:
        mismatch = model_args_mismatch(saved, model.build_args)
        if mismatch:
            raise ConfigError(f"cannot resume from {path}, it holds another model: {mismatch}")
    load(model, checkpoint["state_dict"])


def load_resumed_state(checkpoint, path, optimizer, scaler, best, files, log):
    """Optimizer and scaler state (after the model reached its device); returns (finished steps, the tracker
    `best` restored)."""
    if checkpoint.get("optimizer"):
        optimizer.load_state_dict(checkpoint["optimizer"])
    if scaler is not None and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    best = best.restored(checkpoint)
    log.heading(f"=> resuming {path}: {files.done_text(checkpoint)} done, {best.resume_line()}")
    return int(checkpoint.get(files.unit, 0)), best
