"""What a run's step loop and its task's hooks share (Run), and the end of a training step that every task's loop
calls (finish_step: evaluate if due, track the best, record, checkpoint)."""
import time
from dataclasses import dataclass
from typing import Any

from lib.engine.run_state import save_checkpoint


@dataclass
class Run:
    """What the step loop and the task's hooks share: the run's folder and files, the model (model: the one to
    checkpoint, train_model / eval_model: wrapped for training and evaluation), data, optimizer, records."""
    task: Any
    args: Any
    ctx: Any
    log: Any
    guard: Any
    run_dir: str
    files: Any
    data: Any
    model: Any
    train_model: Any
    eval_model: Any
    criterion: Any
    optimizer: Any
    scaler: Any
    schedule: Any
    best: Any
    metrics: Any
    writer: Any
    checkpoint: Any
    start: int
    resumed_inside: Any

    def save(self, finished, is_best=False, **kwargs):
        """The checkpoint of `finished` steps (lib.engine.run_state.save_checkpoint); its path."""
        return save_checkpoint(self.files, self.run_dir, finished, is_best, self.model, self.optimizer, self.scaler,
                               self.schedule, self.best, self.args, self.ctx, self.log, **kwargs)

    def add_scalars(self, pairs, step):
        if self.writer is not None:
            for tag, value in pairs:
                self.writer.add_scalar(tag, value, step)


def finish_step(run, finished, record, started, due, evaluate):
    """After `finished` steps: if due, evaluate() (the task's stats), track the best (or, for a task that does not
    select, selects(args) False, only report), write the task's metrics row and tensorboard scalars (its
    record(stats, record)); then checkpoint. record: the step's training record (train_loss, lr, ...)."""
    task, args = run.task, run.args
    is_best = False
    if due:
        stats = evaluate()
        if task.selects(args):
            is_best = run.best.update(finished, stats)
            run.log.info(task.best_line(run.best))
        else:  # e.g. the test split: its numbers are reported as they come, never selected on
            run.best.last = dict(stats, **{run.files.unit: finished})
        row, scalars = task.record(stats, record)
        run.add_scalars(scalars, finished)
        run.metrics.append(dict(record, **row, **{run.files.unit: finished}, time=time.time() - started))
    if run.writer is not None:
        run.writer.flush()
    run.guard.saved(run.save(finished, is_best))
