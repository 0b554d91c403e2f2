"""The iteration loop of the run lifecycle (lib/engine/lifecycle.py), for tasks counted in iterations with an
evaluation every --eval-every iterations and after the last (segmentation).

The task's train_steps(run, batches, start, stop, progress, save) trains iterations [start, stop) from the
batch iterator and returns the mean training loss since the last evaluation (progress: what a checkpoint written
between evaluations had done since it, for the interval the run resumes in; save(done, progress): such a
checkpoint); its train_batches(run) gives the iterator, which starts where the run does.
"""
import time

from lib.engine.run_context import finish_step


def run_iterations(run):
    args, task = run.args, run.task
    batches = task.train_batches(run)
    iteration = run.start

    def save_between(done, progress):
        return run.save(done, progress=progress)

    while iteration < args.iters:
        started = time.time()
        stop = min((iteration // args.eval_every + 1) * args.eval_every, args.iters)
        progress = run.resumed_inside if iteration == run.start else None
        started -= progress.seconds if progress else 0
        train_loss = task.train_steps(run, batches, iteration, stop, progress, save_between)
        lr, iteration = run.schedule.lr_at(stop - 1), stop
        finish_step(run, iteration, dict(train_loss=train_loss, lr=lr), started, True,
                    lambda: task.evaluate_run(run, stop))
