"""Bookkeeping of one segmentation run: its folder, its checkpoints, what to resume from, the best mIoU.

A run folder (<output-dir>/<dataset>/<backbone><arch>/<checkpoints>) holds iter_<n>.pth.tar, written after n
iterations (only the newest --keep-checkpoints kept; also between evaluations, with --save-every,
--save-every-minutes or on a preemption signal), and model_best.pth.tar (best mIoU, only after an evaluation), both
written atomically by lib.engine.checkpoint.atomic_save; log_train.txt, metrics.jsonl, tensorboard events and
args.yaml.
"""
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Optional

from lib.engine.checkpoint import BEST_NAME, capture_rng, save_from_main
from lib.engine.distributed import gather_objects
from lib.engine.preemption import EpochProgress
from lib.engine.resume_check import check_run_folder
from lib.errors import ConfigError

_ITER_NAME = re.compile(r"^iter_(\d+)\.pth\.tar$")


def run_folder(args):
    return os.path.join(args.output_dir, args.dataset, f"{args.backbone}{args.arch}", args.checkpoints)


def iteration_checkpoints(run_dir):
    """[(iteration, path)] of the run folder's iteration checkpoints, oldest first."""
    if not os.path.isdir(run_dir):
        return []
    found = [(_ITER_NAME.match(name), name) for name in os.listdir(run_dir)]
    return sorted((int(match.group(1)), os.path.join(run_dir, name)) for match, name in found if match)


def resume_source(args, run_dir, log):
    """The checkpoint to resume from, or None; refuses to start over a folder holding another run."""
    has_any = bool(iteration_checkpoints(run_dir)) or os.path.isfile(os.path.join(run_dir, BEST_NAME))
    if args.resume == "auto":
        found = iteration_checkpoints(run_dir)
        if not found:
            log.warn(f"--resume auto: no checkpoint in {run_dir}, starting from scratch")
            return None
        return found[-1][1]
    check_run_folder(run_dir, args.resume, has_any)
    return args.resume or None


@dataclass
class MIoUTracker:
    """Best mIoU so far (with its iteration) and the latest evaluation; model_best.pth.tar follows the mIoU."""
    best: Optional[float] = None
    best_iter: int = 0
    last: Optional[dict] = None

    def update(self, iteration, stats):
        self.last = dict(stats, iteration=iteration)
        if not math.isnan(stats["mIoU"]) and (self.best is None or stats["mIoU"] > self.best):
            self.best, self.best_iter = stats["mIoU"], iteration
            return True
        return False

    def state_dict(self):
        return {"best_miou": self.best, "best_iter": self.best_iter, "last_eval": self.last}

    @classmethod
    def from_checkpoint(cls, checkpoint):
        return cls(checkpoint.get("best_miou"), int(checkpoint.get("best_iter", 0)), checkpoint.get("last_eval"))

    def summary(self):
        """The run's closing line: the final evaluation and the best one, reported separately."""
        if self.last is None:
            return "=> done: no evaluation was run"
        last = self.last
        return (f"=> done: final mIoU {last['mIoU']:.2f} aAcc {last['aAcc']:.2f} (iteration {last['iteration']}) | "
                f"best mIoU {self.best:.2f} (iteration {self.best_iter})")


def save_checkpoint(run_dir, iteration, is_best, model, optimizer, scaler, schedule, tracker, args, ctx, log,
                    progress=None):
    """iter_<iteration>.pth.tar (and model_best.pth.tar if is_best) from rank 0, with every process's RNG state
    gathered at this point, where the next iteration starts; returns its path in every process.

    progress: this process's EpochProgress since the last evaluation, for a checkpoint between evaluations (the
    resumed run's next evaluation then reports the training loss over the whole interval). Older files are pruned
    only once the new one is complete; a failed write leaves no partial file and raises WriteFailed everywhere.
    """
    rng_states = gather_objects(ctx, capture_rng())
    progress_states = gather_objects(ctx, progress.state_dict()) if progress is not None else None

    def contents():
        return {
            "iteration": iteration, "model_args": dict(model.build_args), "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None,
            "lr_schedule": schedule.state_dict(), "rng_states": rng_states, "world_size": ctx.world_size,
            "args": {key: value for key, value in vars(args).items() if key != "resolved"},
            "interval_progress": progress_states, **tracker.state_dict(),
        }

    def last_good():
        found = iteration_checkpoints(run_dir)
        return found[-1][1] if found else None

    def prune():
        if args.keep_checkpoints > 0:
            for _, old in iteration_checkpoints(run_dir)[:-args.keep_checkpoints]:
                os.remove(old)

    path = os.path.join(run_dir, f"iter_{iteration}.pth.tar")
    return save_from_main(ctx, log, run_dir, path, is_best, contents, last_good, prune)


def resumed_interval(checkpoint, path, ctx, args):
    """This process's EpochProgress since the last evaluation, from a checkpoint written between evaluations,
    or None. The batches of iteration i depend on the number of processes and the batch size: they must not
    change."""
    states = checkpoint.get("interval_progress")
    if not states:
        return None
    saved = (checkpoint.get("world_size"), (checkpoint.get("args") or {}).get("batch_size"))
    if saved != (ctx.world_size, args.batch_size):
        raise ConfigError(f"{path} was written between evaluations by {saved[0]} process(es) of batch {saved[1]}: "
                          f"continue it with the same (this run: {ctx.world_size} x {args.batch_size})")
    return EpochProgress.from_state(states[ctx.rank])


def drop_records_after(path, iteration):
    """Forget metrics.jsonl records after `iteration` (a killed run may have logged an evaluation it never
    checkpointed; the resumed run recomputes it). The file is rewritten atomically."""
    if not os.path.isfile(path):
        return
    with open(path, "r", encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]

    def keep(line):
        try:
            return int(json.loads(line)["iteration"]) <= iteration
        except (ValueError, KeyError, TypeError):
            return True  # a damaged line is kept rather than silently lost
    kept = [line for line in lines if keep(line)]
    if len(kept) == len(lines):
        return
    temp = path + ".tmp"
    with open(temp, "w", encoding="utf-8") as f:
        f.writelines(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
