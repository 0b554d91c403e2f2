"""How a run folder names, finds and prunes its checkpoints, per step unit: the one thing the checkpoint lifecycle
(lib/engine/run_state.py) asks of "epoch" or "iteration".

EpochFiles (classification, video): <epoch>-<dataset>-r-<arch>-w-<n><type>-block.pth.tar (the reference's names),
<that>.iter<I>.pth.tar inside an epoch; IterationFiles (segmentation): iter_<n>.pth.tar, also between evaluations.
Both keep model_best.pth.tar beside them (lib.engine.checkpoint.save_from_main).
"""
import os
import re
from functools import partial

from lib.engine.checkpoint import (
    BEST_NAME,
    checkpoint_name,
    epoch_checkpoints,
    has_checkpoints,
    latest_checkpoint,
    link_checkpoint,
    mid_epoch_checkpoints,
    mid_epoch_name,
    prune_epoch_checkpoints,
)

_ITER_NAME = re.compile(r"^iter_(\d+)\.pth\.tar$")


class EpochFiles:
    unit = "epoch"
    progress_key = "epoch_progress"  # every process's position inside the epoch of a mid-epoch checkpoint
    stopped_inside = "inside an epoch"
    fallback = ", or resume from the checkpoint of the epoch before it"

    def __init__(self, args):
        self.args = args
        # index -> the file name of this run's checkpoint after 0-based epoch index
        self.own = partial(checkpoint_name, dataset=args.dataset, arch=args.arch, nl_nums=args.nl_nums,
                           nl_type=args.nl_type)

    def path(self, run_dir, finished, progress):
        name = self.own(finished - 1) if progress is None else mid_epoch_name(self.own(finished), progress.iterations)
        return os.path.join(run_dir, name)

    def entries(self, finished, progress, schedule, pending_eval):
        """What only an epoch checkpoint holds (the reference's "epoch", "arch", "lr"; the dataset; the task)."""
        args = self.args
        entries = {"epoch": finished, "arch": f"{args.backbone}-{args.arch}", "dataset": args.dataset,
                   "lr": schedule.lr_at(finished if progress is not None else finished - 1),
                   "pending_eval": pending_eval}
        if getattr(args, "task", None):  # which entry point the checkpoint belongs to (models/tasks.py)
            entries["task"] = args.task
        return entries

    @staticmethod
    def latest(run_dir):
        return latest_checkpoint(run_dir)

    @staticmethod
    def has_any(run_dir):
        return has_checkpoints(run_dir)

    @staticmethod
    def unreadable(run_dir):
        """Checkpoints that latest() found none readable among: starting over would overwrite them."""
        return has_checkpoints(run_dir)

    def prune(self, run_dir, written, progress):
        if progress is None:
            self.prune_own(run_dir)
        else:
            self._prune_mid_epoch(run_dir, keep=written)

    def prune_own(self, run_dir):
        """Apply --keep-checkpoints to this run's per-epoch files (files of other runs in the folder are kept), and
        remove its mid-epoch files that the newest per-epoch file supersedes."""
        removed = prune_epoch_checkpoints(run_dir, self.args.keep_checkpoints, self.own)
        own = [index for index, path in epoch_checkpoints(run_dir) if os.path.basename(path) == self.own(index)]
        if own:
            self._prune_mid_epoch(run_dir, keep=None, before=own[-1] + 1)
        return removed

    def _prune_mid_epoch(self, run_dir, keep, before=None):
        """Remove this run's mid-epoch checkpoints other than `keep` (only those inside epochs < `before`)."""
        for index, iterations, path in mid_epoch_checkpoints(run_dir):
            if path != keep and os.path.basename(path) == mid_epoch_name(self.own(index), iterations) and \
                    (before is None or index < before):
                os.remove(path)

    def restore_step_file(self, run_dir, resume_path, finished):
        """Resumed from model_best.pth.tar (e.g. killed between writing it and the per-epoch file, or the per-epoch
        files were deleted): give it the per-epoch name of its epoch too, so the folder reads as a finished epoch."""
        if os.path.basename(resume_path) != BEST_NAME or finished < 1:
            return None
        path = os.path.join(run_dir, self.own(finished - 1))
        if os.path.exists(path):
            return None
        link_checkpoint(resume_path, path)
        return path

    @staticmethod
    def done_text(checkpoint):
        finished = int(checkpoint.get("epoch", 0))
        inside = (checkpoint.get("epoch_progress") or [{}])[0].get("iterations")
        return f"{finished} epoch(s) and {inside} iteration(s) of epoch {finished + 1}" if inside else \
            f"{finished} epoch(s)"


class IterationFiles:
    unit = "iteration"
    progress_key = "interval_progress"  # every process's training loss since the last evaluation
    stopped_inside = "between evaluations"
    fallback = ""

    def __init__(self, args):
        self.args = args

    @staticmethod
    def path(run_dir, finished, progress):
        return os.path.join(run_dir, f"iter_{finished}.pth.tar")

    @staticmethod
    def entries(finished, progress, schedule, pending_eval):
        return {"iteration": finished}

    @staticmethod
    def checkpoints(run_dir):
        """[(iteration, path)] of the run folder's iteration checkpoints, oldest first."""
        if not os.path.isdir(run_dir):
            return []
        found = [(_ITER_NAME.match(name), name) for name in os.listdir(run_dir)]
        return sorted((int(match.group(1)), os.path.join(run_dir, name)) for match, name in found if match)

    def latest(self, run_dir):
        found = self.checkpoints(run_dir)
        return found[-1][1] if found else None

    def has_any(self, run_dir):
        return bool(self.checkpoints(run_dir)) or os.path.isfile(os.path.join(run_dir, BEST_NAME))

    @staticmethod
    def unreadable(run_dir):
        return False  # latest() does not read the files: a damaged one fails when it is loaded

    def prune(self, run_dir, written, progress):
        self.prune_own(run_dir)

    def prune_own(self, run_dir):
        if self.args.keep_checkpoints > 0:
            for _, old in self.checkpoints(run_dir)[:-self.args.keep_checkpoints]:
                os.remove(old)

    @staticmethod
    def restore_step_file(run_dir, resume_path, finished):
        return None  # model_best.pth.tar is never a resume source here (latest() reads only iter_<n> files)

    @staticmethod
    def done_text(checkpoint):
        return f"{int(checkpoint.get('iteration', 0))} iteration(s)"
