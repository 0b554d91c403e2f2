"""The pieces of the run lifecycle (lib/engine/lifecycle.py) around the steps, and the epoch loop: the guarded run
around the training, the resumed state, the records a (resumed) run opens, the RNG states it restores, one
training epoch with its mid-epoch checkpoints and preemption stops (lib/engine/preemption.py), and run_epochs.

A task keeps what is its own (data, model, evaluation, metrics rows) and passes what differs as arguments (how a
batch moves to the device, the name of a sample in progress lines).
"""
import os
import time

from lib.data import build_loaders
from lib.engine.checkpoint import remove_stale_temp_files, restore_rng
from lib.engine.distributed import all_reduce_sums
from lib.engine.logger import MetricsFile, open_tensorboard, write_args
from lib.engine.metrics import format_seconds, percent, topk_hits
from lib.engine.preemption import EpochProgress, RunGuard, fetch_batch, reported_errors
from lib.engine.resume_check import resume_args_path
from lib.engine.run_context import finish_step
from lib.engine.run_lock import RunLock
from lib.engine.run_state import load_resumed_state, resumed_progress
from lib.engine.runtime import LossCheck, autocast, cpu_threads_note, optimizer_step, seed_everything
from lib.engine.schedule import WarmupStepSchedule, set_lr
from lib.errors import ConfigError


def guarded_run(run_dir, ctx, log, args, body):
    """body(guard) under the run lock of run_dir (one run per folder: a second one stops, naming the holder), with
    preemption signals turned into a checkpoint and a stop (RunGuard) and every rank's errors heard."""
    lock = RunLock(run_dir).acquire() if ctx.is_main else None
    try:
        # From here on a preemption signal only marks the run to stop at the next iteration, after a checkpoint.
        with RunGuard(ctx, log, args.save_every, args.save_every_minutes) as guard, \
                reported_errors(guard, os.path.join(run_dir, "log_train.txt")):
            return body(guard)
    finally:
        if lock is not None:
            lock.release()


def step_schedule(args, ctx, recipe_batch):
    """The warm-up / step lr schedule; --lr-scale linear scales --lr by the global batch over the recipe's."""
    scale = args.batch_size * ctx.world_size / recipe_batch if args.lr_scale == "linear" else 1
    return WarmupStepSchedule(args.lr * scale, args.lr_steps, args.warmup_epochs, args.lr_gamma)


def epoch_data(train_set, val_set, info, args, ctx, **more):
    """The data dict of an epoch task (lib/engine/__init__.py): the sets, their loaders and the training sampler
    (each process its shard; set_epoch reshuffles and skips what a resumed epoch saw)."""
    train_loader, val_loader, train_sampler = build_loaders(train_set, val_set, args.batch_size, args.workers,
                                                            distributed=ctx.distributed, seed=args.seed,
                                                            device=ctx.device)
    return dict(train_set=train_set, val_set=val_set, info=info, train_loader=train_loader, val_loader=val_loader,
                train_sampler=train_sampler, **more)


def resumed_state(checkpoint, resume_path, optimizer, scaler, ctx, args, log, guard, tracker, files):
    """(steps done, the best tracker, this process's progress since the last full step or None) of a run resumed
    from checkpoint (optimizer and scaler restored; the guard knows the checkpoint), or of a new run (None:
    0, tracker, None)."""
    if checkpoint is None:
        return 0, tracker, None
    start, best = load_resumed_state(checkpoint, resume_path, optimizer, scaler, tracker, files, log)
    resumed_inside = resumed_progress(checkpoint, resume_path, ctx, args, files)
    warn_other_world_size(checkpoint, ctx, log)
    guard.saved(resume_path)
    return start, best, resumed_inside


def warn_other_world_size(checkpoint, ctx, log):
    saved = checkpoint.get("world_size")
    if saved is not None and int(saved) != ctx.world_size:
        log.warn(f"the checkpoint was trained by {saved} process(es), this run has {ctx.world_size}: training "
                 f"continues, but not as the same run (the data sharding and the BatchNorm batches change)")


def open_records(run_dir, args, ctx, log, checkpoint, resume_path, start, total, work, files):
    """(metrics file, tensorboard writer or None) of a run about to train from step start of total. Called only
    once data, model and checkpoint are loaded, so that a failed start leaves no trace. work: whether anything is
    left to train or evaluate (lib.engine.resume_check.has_work); without it no args file and no event file are
    added."""
    metrics = MetricsFile(os.path.join(run_dir, "metrics.jsonl"), enabled=ctx.is_main)
    if ctx.is_main:
        os.makedirs(run_dir, exist_ok=True)
        log.attach(os.path.join(run_dir, "log_train.txt"))
        for name in remove_stale_temp_files(run_dir):
            log.warn(f"removed {name}, left by an interrupted checkpoint write")
        if work:
            write_args(resume_args_path(run_dir, start) if checkpoint else os.path.join(run_dir, "args.yaml"), args)
        if start < total:  # rows after the checkpoint are recomputed; with nothing to train, all stay
            metrics.drop_after(start, files.unit)
        if checkpoint is not None and files.restore_step_file(run_dir, resume_path, start):
            log.info(f"=> {resume_path} is also the checkpoint of {files.unit} {start} now")
    return metrics, open_tensorboard(run_dir, start, enabled=ctx.is_main and work)


def restore_process_rng(checkpoint, ctx, args, start_epoch, log):
    """This process's RNG states from the checkpoint (exact resume), or a seed that differs per epoch."""
    rng_states = (checkpoint or {}).get("rng_states") or []
    if ctx.rank < len(rng_states):
        restore_rng(rng_states[ctx.rank], ctx.device, log.warn)
    elif checkpoint is not None:
        log.warn("the checkpoint has no RNG state for this process: random draws will differ from the original run")
        seed_everything(args.seed + ctx.rank + 1000 * start_epoch)


def classifier_loss(model, criterion, inputs, target):
    """The forward pass of a classifier: (loss, logits) of criterion(model(inputs), target)."""
    output = model(inputs)
    return criterion(output, target), output


def train_one_epoch(model, criterion, optimizer, scaler, loader, ctx, epoch, lr, args, log, to_device, guard=None,
                    progress=None, save=None, unit="img", accuracy="top-1", forward=classifier_loss, lr_at=None):
    """One pass over the training data; returns the epoch's mean loss and top-1 over all processes' samples.

    to_device(inputs, target, ctx, args): the batch on the run's device, in its memory format.
    progress: an EpochProgress to continue (a run resumed inside the epoch: the loader yields only the rest).
    guard: a RunGuard consulted before every batch; it may call save(progress) (a mid-epoch checkpoint) and stop
    the run (Preempted). Without one, an error reading a batch is raised at once.
    unit, accuracy: how progress lines name a sample ("img/s", "clips/s") and the accuracy ("clip top-1"); accuracy
    None: none is counted (a detector's forward gives losses, no logits; top1 is then None).
    forward(model, criterion, inputs, target) -> (loss, logits): a task whose model or loss gives more than logits
    (re-ID: logits and a feature, several loss terms; detection: a loss dict, logits None) says here how its loss
    and the scored logits are made.
    lr_at(iteration, num_batches) -> lr: set before every step (a warm-up counted in iterations); else lr holds for
    the epoch.
    """
    model.train()
    progress = progress or EpochProgress()
    first, seconds_before = progress.iterations, progress.seconds
    num_batches, start, seen = first + len(loader), time.time(), 0
    batches, loss_check = iter(loader), None
    for i in range(first, num_batches + 1):
        batch, error = fetch_batch(batches) if i < num_batches else (None, None)
        if batch is None and error is None:
            break  # every process has as many batches: all leave here together
        if guard is not None:
            guard.at_boundary(epoch * num_batches + i, lambda: save(progress), f"epoch {epoch + 1}, iteration {i}",
                              error, loss_check)
        elif error is not None:
            raise error
        elif loss_check is not None:
            loss_check.raise_if_any(ctx)
        if lr_at is not None:
            lr = lr_at(i, num_batches)
            set_lr(optimizer, lr)
        inputs, target = to_device(*batch, ctx, args)
        with autocast(ctx.device, args.amp):
            loss, output = forward(model, criterion, inputs, target)
        optimizer_step(loss, optimizer, scaler)
        loss_check = LossCheck(loss, f"at epoch {epoch + 1}, iteration {i + 1}: run stopped, this epoch is not "
                                     f"checkpointed")
        batch_size = len(target)
        batch_correct = topk_hits(output, target, (1,))[0] if accuracy else 0  # on the device: read when printed
        progress.add(loss, batch_correct, batch_size)
        elapsed = time.time() - start
        progress.seconds, seen = seconds_before + elapsed, seen + batch_size
        if guard is not None:
            guard.step_done()
        if i % args.print_freq == 0 or i == num_batches - 1:
            scored = (f"  {accuracy} {percent(int(batch_correct), batch_size):.2f} "
                      f"({percent(int(progress.correct), progress.count):.2f})") if accuracy else ""
            log.info(f"Epoch [{epoch + 1}/{args.epochs}][{i + 1}/{num_batches}]  loss {loss.item():.4f} "
                     f"({progress.mean_loss():.4f}){scored}"
                     f"  lr {lr:.6g}  {seen * ctx.world_size / max(elapsed, 1e-9):.1f} {unit}/s  "
                     f"eta {format_seconds(elapsed / (i + 1 - first) * (num_batches - i - 1))}"
                     + (cpu_threads_note(ctx.device) if i == first else ""))
    if loss_check is not None:
        loss_check.raise_if_any(ctx)  # the last step, before the epoch's checkpoint
    loss_sum, correct_sum, count = all_reduce_sums(ctx, [progress.loss_sum, progress.correct, progress.count])
    return {"loss": loss_sum / count, "top1": percent(correct_sum, count) if accuracy else None, "n": int(count),
            "seconds": progress.seconds}


def evaluated(evaluate, finished, guard, writer, save_pending):
    """evaluate()'s stats after `finished` epochs, or, in every process:
    - a stop signal agreed before the evaluation starts: the trained epoch is checkpointed as awaiting its
      evaluation (save_pending() returns the file's path), which the resumed run does first; Preempted;
    - a bad input in the evaluation (e.g. an unreadable image): the same checkpoint, then one line saying so."""
    if guard.stop_agreed():  # stopped before a long evaluation
        guard.saved(save_pending())
        guard.stop(f"the end of epoch {finished}, before its evaluation")
    try:
        return evaluate()
    except ConfigError as error:
        if writer is not None:
            writer.flush()
        save_pending()
        raise ConfigError(f"{error} (epoch {finished} is trained and checkpointed: fix this and rerun with "
                          f"--resume auto, which evaluates it first)") from None


def warn_short_warmup(args, schedule, log):
    """One warning where the run ends inside its warm-up: its lr never reaches --lr (the warm-up's last epoch)."""
    warmup = getattr(args, "warmup_epochs", 0) or 0
    if args.epochs < warmup:
        log.warn(f"--epochs {args.epochs} ends inside the {warmup} warm-up epochs: the lr stops at "
                 f"{schedule.lr_at(args.epochs - 1):.6g} and never reaches {schedule.base_lr:.6g} (pass "
                 f"--warmup-epochs {args.epochs} or fewer, or more --epochs)")


def run_epochs(run):
    """The epochs from run.start to --epochs, after the evaluation a checkpoint awaits (pending_eval). The task's
    train_epoch(run, epoch, lr, progress, save) trains one (progress: where a mid-epoch checkpoint stopped
    inside the first epoch, else None; save(progress): a mid-epoch checkpoint); its evaluate_run(run, finished)
    evaluates, every --eval-freq epochs and after the last (lib.engine.run_context.finish_step)."""
    args, task, log = run.args, run.task, run.log

    def finish_epoch(finished, record, started, due):
        # evaluated: a stop or a bad input before the evaluation is done checkpoints the epoch as awaiting it
        finish_step(run, finished, record, started, due, lambda: evaluated(
            lambda: task.evaluate_run(run, finished), finished, run.guard, run.writer,
            lambda: run.save(finished, pending_eval=dict(record, time=time.time() - started))))

    warn_short_warmup(args, run.schedule, log)
    pending = (run.checkpoint or {}).get("pending_eval")
    if pending:
        log.info(f"=> evaluating epoch {run.start} first: its evaluation failed in the run that trained it")
        record = {key: pending[key] for key in ("train_loss", "train_top1", "lr")}
        finish_epoch(run.start, record, time.time() - pending.get("time", 0), due=True)
    for epoch in range(run.start, args.epochs):
        progress = run.resumed_inside if epoch == run.start else None
        started, lr = time.time() - (progress.seconds if progress else 0), run.schedule.lr_at(epoch)
        set_lr(run.optimizer, lr)
        # A resume inside the epoch leaves out the samples its checkpoint's iterations saw.
        run.data["train_sampler"].set_epoch(epoch, skip=progress.iterations * args.batch_size if progress else 0)
        train_stats = task.train_epoch(run, epoch, lr, progress,
                                       lambda progress, epoch=epoch: run.save(epoch, progress=progress))
        finished = epoch + 1
        run.add_scalars([("Train Loss", train_stats["loss"]), ("LR", lr)], finished)
        record = dict(train_loss=train_stats["loss"], train_top1=train_stats["top1"], lr=lr)
        finish_epoch(finished, record, started, due=finished % args.eval_freq == 0 or finished == args.epochs)
