"""The one training run of every task (the contract a task fulfils: lib/engine/__init__.py).

train(task, args, ctx, log): run folder -> lock and preemption guard -> resume source -> data -> checkpoint ->
model (resumed weights, same settings?) -> optimizer, schedule, scaler -> resumed state and best -> records ->
RNG -> the step loop of the task's unit (epochs.run_epochs or iterations.run_iterations) -> the closing line.
Nothing is written before data, model and checkpoint are loaded: a failed start leaves no trace.
"""
import torch

from lib.engine.checkpoint import load_checkpoint
from lib.engine.distributed import from_main
from lib.engine.epochs import guarded_run, open_records, restore_process_rng, resumed_state, run_epochs
from lib.engine.iterations import run_iterations
from lib.engine.resume_check import check_resume_settings, has_work
from lib.engine.run_context import Run
from lib.engine.run_state import check_dataset, load_resumed_weights, resume_source
from lib.engine.runtime import run_main
from models.tasks import require_task

STEP_LOOPS = {"epoch": run_epochs, "iteration": run_iterations}


def main(task, args, launcher_pid):
    """An entry point's main(args): the task's flags resolved, its model flags checked, then --valid's
    validate_checkpoint or train (lib.engine.runtime.run_main)."""
    return run_main(task.resolve(args), launcher_pid, task.check_model, task.validate_checkpoint,
                    lambda args, ctx, log: train(task, args, ctx, log))


def train(task, args, ctx, log):
    """Train `task` as args say; returns the last evaluation's stats (None if none ran)."""
    run_dir = task.task_run_folder(args)
    log.heading(f"=> torch {torch.__version__}, device {ctx.device}, {ctx.world_size} process(es), run folder "
                f"{run_dir}")
    # One run per folder; signals checkpoint and stop; every rank's errors reach the log.
    return guarded_run(run_dir, ctx, log, args, lambda guard: _train(task, args, ctx, log, run_dir, guard))


def _train(task, args, ctx, log, run_dir, guard):
    files = task.STEP_FILES(args)
    resume_path = from_main(ctx, lambda: resume_source(args, run_dir, log, files))
    data = task.load_data(args, ctx)
    checkpoint = load_checkpoint(resume_path) if resume_path else None
    if checkpoint is not None:
        require_task(checkpoint, resume_path, task.TASK)
        check_dataset(checkpoint, resume_path, args.dataset)
        if hasattr(task, "args_for_checkpoint"):  # e.g. the model flags a reference checkpoint implies
            task.args_for_checkpoint(args, checkpoint, resume_path, log)
    # A resumed model's weights come from its checkpoint: pretrained weights are not loaded again.
    model = task.create_model(args, data, None if checkpoint else args.pretrained)
    if checkpoint is not None:
        load_resumed_weights(checkpoint, resume_path, model, task.load_weights)
        check_resume_settings(checkpoint, resume_path, args, log, resumable=task.RESUMABLE_SETTINGS,
                              world_size=ctx.world_size)  # same settings?
    model, train_model, eval_model = task.prepare_model(model, args, ctx, log)
    schedule = task.lr_schedule(args, ctx)
    optimizer = task.create_optimizer(model, args, schedule.lr_at(0))
    scaler = torch.amp.GradScaler(ctx.device.type) if args.amp == "fp16" else None
    start, best, resumed_inside = resumed_state(checkpoint, resume_path, optimizer, scaler, ctx, args, log, guard,
                                                task.tracker(args), files)
    task.log_setup(args, ctx, data, model, schedule, log)
    total = getattr(args, task.TOTAL_FLAG)
    work = has_work(start, total, (checkpoint or {}).get("pending_eval"))  # else write no records

    metrics, writer = open_records(run_dir, args, ctx, log, checkpoint, resume_path, start, total, work, files)
    restore_process_rng(checkpoint, ctx, args, start, log)
    run = Run(task, args, ctx, log, guard, run_dir, files, data, model, train_model, eval_model,
              task.build_criterion(args), optimizer, scaler, schedule, best, metrics, writer, checkpoint, start,
              resumed_inside)
    try:
        STEP_LOOPS[files.unit](run)
    finally:
        if writer is not None:
            writer.close()
    if start >= total:  # a resumed run with all steps done trains nothing: say so, still apply --keep-checkpoints
        log.warn(f"nothing left to train: the checkpoint has {start} {files.unit}s, --{task.TOTAL_FLAG} is {total}")
        if ctx.is_main:
            files.prune_own(run_dir)
    log.heading(task.summary(best, args))
    return best.last
