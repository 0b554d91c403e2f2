"""Bookkeeping of one training run: its folder, what to resume from, the best accuracies, the checkpoint dict."""
import os
from dataclasses import asdict, dataclass
from functools import partial
from typing import Optional

import torch

from lib.engine.checkpoint import (BEST_NAME, capture_rng, checkpoint_name, epoch_checkpoints, has_checkpoints,
                                   latest_checkpoint, link_checkpoint, mid_epoch_checkpoints, mid_epoch_name,
                                   model_args_mismatch, prune_epoch_checkpoints, save_from_main)
from lib.engine.distributed import gather_objects
from lib.engine.preemption import EpochProgress
from lib.engine.resume_check import check_run_folder
from lib.errors import ConfigError
from models import build_model, load_state_dict_checked


def run_folder(args):
    """<output-dir>/<dataset>/<arch>/<checkpoints>, the reference's layout (arch 20/56/110 are PreResNets and
    50/101/152 ResNets, so the backbone needs no level of its own)."""
    return os.path.join(args.output_dir, args.dataset, str(args.arch), args.checkpoints)


def model_kwargs(args, num_classes, pretrained=None):
    """build_model's keyword arguments from the flags."""
    return dict(backbone=args.backbone, arch=args.arch, num_classes=num_classes,
                nl_type=args.nl_type if args.nl_nums else None, nl_nums=args.nl_nums, nl_layer=args.nl_layer,
                stage_num=args.stage_nums, div=args.div, is_sys=args.is_sys, is_norm=args.is_norm,
                order=args.order, output_relu=args.output_relu, pretrained=pretrained or None)


def check_model_flags(args):
    """Fail on a bad model flag before any data is read: building on the meta device costs no memory or time."""
    with torch.device("meta"):
        build_model(**model_kwargs(args, num_classes=2))


def resume_source(args, run_dir, log):
    """The checkpoint to resume from, or None. Refuses to start over, or resume into, a run folder whose
    checkpoints would be overwritten without the user asking for it."""
    if args.isresume and args.resumename:
        path = os.path.join(run_dir, args.resumename)
        if not os.path.isfile(path):
            raise ConfigError(f"--resumename {args.resumename}: no such file in the run folder {run_dir}")
        return path
    if args.resume == "auto":
        path = latest_checkpoint(run_dir)
        if path is None and has_checkpoints(run_dir):
            # Starting over would overwrite them: the user has to decide what to do with those files.
            raise ConfigError(f"--resume auto: no readable checkpoint in {run_dir} (damaged files?): move them "
                              f"away, or choose a new --checkpoints name")
        if path is None:
            log.warn(f"--resume auto: no checkpoint in {run_dir}, starting from scratch")
        elif os.path.basename(path) == BEST_NAME:
            log.warn(f"--resume auto: no newer per-epoch checkpoint in {run_dir}, continuing from {BEST_NAME}")
        return path
    check_run_folder(run_dir, args.resume, has_checkpoints(run_dir))
    return args.resume or None


@dataclass
class BestTracker:
    """Best top-1 and best top-5 so far (each with its epoch, counted from 1), and the latest evaluation.

    As the reference, the two bests are tracked independently; model_best.pth.tar follows top-1.
    """
    top1: Optional[float] = None
    top1_epoch: int = 0
    top5: Optional[float] = None
    top5_epoch: int = 0
    last: Optional[dict] = None

    def update(self, epoch, stats):
        """Record an evaluation after `epoch` finished epochs; True if its top-1 is a new best."""
        self.last = dict(stats, epoch=epoch)
        if self.top5 is None or stats["top5"] > self.top5:
            self.top5, self.top5_epoch = stats["top5"], epoch
        if self.top1 is None or stats["top1"] > self.top1:
            self.top1, self.top1_epoch = stats["top1"], epoch
            return True
        return False

    def checkpoint_entries(self):
        # best_prec1 keeps the reference's key name (and a 0 for "none yet", as its initial value).
        return {"best_prec1": self.top1 or 0.0, "best_prec1_epoch": self.top1_epoch,
                "best_prec5": self.top5 or 0.0, "best_prec5_epoch": self.top5_epoch, "last_eval": self.last}

    @classmethod
    def from_checkpoint(cls, checkpoint):
        """Restored from our checkpoints; the reference's hold only best_prec1 (a tensor there), no epochs."""
        def number(key):
            value = checkpoint.get(key)
            # 0 with epoch 0 is our "no evaluation yet"; the reference's files carry no epoch (and a tensor).
            none_yet = value is None or (float(value) == 0 and checkpoint.get(key + "_epoch") == 0)
            return None if none_yet else float(value)

        return cls(top1=number("best_prec1"), top1_epoch=int(checkpoint.get("best_prec1_epoch", 0)),
                   top5=number("best_prec5"), top5_epoch=int(checkpoint.get("best_prec5_epoch", 0)),
                   last=checkpoint.get("last_eval"))

    def as_dict(self):
        return asdict(self)


def summary_line(best):
    """The run's closing line: final and best top-1 / top-5 (the reference reported only the best, which is
    selected on the test set; both are given here)."""
    if best.last is None:
        return "=> done: no evaluation was run"
    last = best.last
    return (f"=> done: final top-1 {last['top1']:.3f} top-5 {last['top5']:.3f} (epoch {last['epoch']}) | "
            f"best top-1 {best.top1:.3f} (epoch {best.top1_epoch}), best top-5 {best.top5:.3f} "
            f"(epoch {best.top5_epoch})")


def _own_name(args):
    """index -> the file name of this run's checkpoint after 0-based epoch index."""
    return partial(checkpoint_name, dataset=args.dataset, arch=args.arch, nl_nums=args.nl_nums, nl_type=args.nl_type)


def prune_own_checkpoints(run_dir, args):
    """Apply --keep-checkpoints to this run's per-epoch files (files of other runs in the folder are kept), and
    remove its mid-epoch files that the newest per-epoch file supersedes."""
    removed = prune_epoch_checkpoints(run_dir, args.keep_checkpoints, _own_name(args))
    own = [index for index, path in epoch_checkpoints(run_dir) if os.path.basename(path) == _own_name(args)(index)]
    if own:
        _prune_mid_epoch(run_dir, args, keep=None, before=own[-1] + 1)
    return removed


def restore_epoch_file(run_dir, resume_path, finished, args):
    """Resumed from model_best.pth.tar (e.g. killed between writing it and the per-epoch file, or the per-epoch
    files were deleted): give it the per-epoch name of its epoch too, so the folder reads as a finished epoch."""
    if os.path.basename(resume_path) != BEST_NAME or finished < 1:
        return None
    path = os.path.join(run_dir, _own_name(args)(finished - 1))
    if os.path.exists(path):
        return None
    link_checkpoint(resume_path, path)
    return path


def save_checkpoint(run_dir, finished, is_best, model, optimizer, scaler, schedule, best, args, ctx, log,
                    pending_eval=None, progress=None):
    """Write the checkpoint of `finished` epochs (and model_best.pth.tar if is_best) from rank 0; returns its path
    in every process. Every process calls it (it gathers their states).

    pending_eval: the epoch's training record (train_loss, train_top1, lr, time) when its due evaluation was not
    run (it failed on bad input, or a signal stopped the run first); a resumed run evaluates this checkpoint first.
    progress: this process's EpochProgress inside epoch `finished` + 1, for a mid-epoch checkpoint
    (<epoch file>.iter<I>.pth.tar); every process's is stored, and a resumed run continues at that iteration.

    The RNG states are gathered from every process at this point, which is exactly where training continues, so a
    resumed run draws the same random numbers as an uninterrupted one. model_best (a hard link to the same file)
    is renamed into place first: a kill in between leaves a best that the resumed run rewrites, never a best older
    than what the last checkpoint claims. Older files are pruned only once the new one is complete and renamed.
    A failed write (OSError: full disk...) leaves no partial file and raises WriteFailed in every process.
    """
    rng_states = gather_objects(ctx, capture_rng())
    progress_states = gather_objects(ctx, progress.state_dict()) if progress is not None else None

    def contents():
        checkpoint = {
            "epoch": finished, "arch": f"{args.backbone}-{args.arch}", "model_args": dict(model.build_args),
            "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "lr": schedule.lr_at(finished if progress is not None else finished - 1),
            "lr_schedule": schedule.state_dict(), "rng_states": rng_states, "world_size": ctx.world_size,
            "dataset": args.dataset, "args": {key: value for key, value in vars(args).items() if key != "resolved"},
            "pending_eval": pending_eval, "epoch_progress": progress_states, **best.checkpoint_entries(),
        }
        if getattr(args, "task", None):  # which entry point the checkpoint belongs to (lib/engine/tasks.py)
            checkpoint["task"] = args.task
        return checkpoint

    def prune():
        if progress is None:
            prune_own_checkpoints(run_dir, args)
        else:
            _prune_mid_epoch(run_dir, args, keep=path)

    path = os.path.join(run_dir, mid_epoch_name(_own_name(args)(finished), progress.iterations)
                        if progress is not None else _own_name(args)(finished - 1))
    return save_from_main(ctx, log, run_dir, path, is_best, contents, lambda: latest_checkpoint(run_dir), prune)


def _prune_mid_epoch(run_dir, args, keep, before=None):
    """Remove this run's mid-epoch checkpoints other than `keep` (only those inside epochs < `before`, if given)."""
    own = _own_name(args)
    for index, iterations, path in mid_epoch_checkpoints(run_dir):
        if path != keep and os.path.basename(path) == mid_epoch_name(own(index), iterations) and \
                (before is None or index < before):
            os.remove(path)


def resumed_progress(checkpoint, path, ctx, args):
    """This process's EpochProgress inside the epoch a mid-epoch checkpoint stopped in, or None (an epoch's
    checkpoint). The position counts iterations of this many processes and images each: those must not change."""
    states = checkpoint.get("epoch_progress")
    if not states:
        return None
    saved = (checkpoint.get("world_size"), (checkpoint.get("args") or {}).get("batch_size"))
    if saved != (ctx.world_size, args.batch_size):
        raise ConfigError(f"{path} was written inside an epoch by {saved[0]} process(es) of batch {saved[1]}: "
                          f"continue it with the same (this run: {ctx.world_size} x {args.batch_size}), or resume "
                          f"from the checkpoint of the epoch before it")
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


def check_dataset(checkpoint, path, dataset):
    """A checkpoint trained on another dataset (e.g. a CIFAR-100 model on CIFAR-10) is refused: its class indices
    mean other classes. The reference's checkpoints do not say their dataset and pass."""
    saved = checkpoint.get("dataset") or (checkpoint.get("args") or {}).get("dataset")
    if saved and saved != dataset:
        raise ConfigError(f"{path} was trained on {saved}, not {dataset}: pass --dataset {saved} (its classes are "
                          f"not {dataset}'s)")


def load_resumed_weights(checkpoint, path, model):
    """The checkpoint's weights into model (on the CPU, before any wrapping), after checking it is the same model."""
    saved = checkpoint.get("model_args")
    if saved:
        mismatch = model_args_mismatch(saved, model.build_args)
        if mismatch:
            raise ConfigError(f"cannot resume from {path}, it holds another model: {mismatch}")
    load_state_dict_checked(model, checkpoint["state_dict"])


def load_resumed_state(checkpoint, path, optimizer, scaler, log):
    """Optimizer and scaler state (after the model reached its device); returns (finished epochs, BestTracker)."""
    if checkpoint.get("optimizer"):
        optimizer.load_state_dict(checkpoint["optimizer"])
    if scaler is not None and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    best = BestTracker.from_checkpoint(checkpoint)
    finished = int(checkpoint.get("epoch", 0))
    inside = (checkpoint.get("epoch_progress") or [{}])[0].get("iterations")
    done = f"{finished} epoch(s) and {inside} iteration(s) of epoch {finished + 1}" if inside else \
        f"{finished} epoch(s)"
    log.heading(f"=> resuming {path}: {done} done, best top-1 {best.top1 or 0:.3f} "
                f"(epoch {best.top1_epoch}), best top-5 {best.top5 or 0:.3f} (epoch {best.top5_epoch})")
    return finished, best
