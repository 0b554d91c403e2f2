#!/usr/bin/env python3
"""Train and evaluate action recognition: 3-D ResNets with space-time nonlocal blocks (SNL and the others).

    python train_video.py --dataset ucf101 --data_dir DATA --pretrained resnet-50-kinetics.pth --nl-type snl
    torchrun --nproc_per_node 8 train_video.py --config configs/kinetics_resnet3d50_snl.yaml --data_dir DATA
    python train_video.py --valid --check_path CHECKPOINT --dataset ucf101 --data_dir DATA
    python train_video.py --dataset fake --output-dir /tmp/smoke           # smoke run, no data needed

The 3D-ResNets framework's recipe fills unset flags (lib/engine/video/recipe.py). Each epoch trains on random clips
and validates on each validation video's centre clip (clip top-1; --validation holdout: videos held out of the
training data, on which the best epoch is chosen; test: the test split, then nothing is chosen); after the last
epoch, and with --valid, the multi-clip test averages --test-clips clips per test video (video top-1). The run
machinery (mid-epoch checkpoints, preemption signals, exact resumes) is lib/engine's, shared with train_val.py.
Outputs go to <output-dir>/<dataset>/<backbone><arch>/<checkpoints>/. Layout as torchvision's
references/video_classification/train.py: get_args_parser(), train_one_epoch(), evaluate(), main(args). See
docs/video.md.
"""
import os

LAUNCHER_PID = os.getppid()  # first thing: under torchrun, a launcher that dies during the imports is noticed

import sys  # noqa: E402  (these imports follow the launcher's pid)
import time

import torch
from torch import nn

from lib.data import build_loaders
from lib.engine import epochs
from lib.engine.checkpoint import load_checkpoint
from lib.engine.distributed import from_main
from lib.engine.evaluation import classifier_stats
from lib.engine.metrics import format_seconds, percent
from lib.engine.resume_check import (EPOCH_BASED, RESUMABLE, check_resume_settings, has_work,
                                     valid_dataset_from_checkpoint)
from lib.engine.run_state import (check_dataset, check_requested_model, load_resumed_weights, resume_source,
                                  save_checkpoint)
from lib.engine.runtime import run_cli, run_main
from lib.engine.tasks import require_task
from lib.engine.video.cli import get_args_parser, parse_video_args  # noqa: F401  (torchvision-style entry point)
from lib.engine.video.multiclip import evaluate_videos
from lib.engine.video.recipe import VIDEO_RECIPES, resolve_video_args
from lib.engine.video.setup import (build_data, check_model_flags, freeze_for_fine_tuning, frozen_parameter_count,
                                    model_kwargs, prepare_video_model, run_folder, test_loader_of, to_device,
                                    trainable_parameters)
from lib.errors import ConfigError
from models import build_model, load_state_dict_checked

# Settings a resume may change besides train_val.py's: the multi-clip test only measures, it does not train.
VIDEO_RESUMABLE = RESUMABLE | EPOCH_BASED | {"test_clips"}


def build_criterion(args):
    return nn.CrossEntropyLoss()


def train_one_epoch(model, criterion, optimizer, scaler, loader, ctx, epoch, lr, args, log, guard=None,
                    progress=None, save=None):
    """One pass over the training videos (one random clip each; lib.engine.epochs.train_one_epoch); returns the
    epoch's mean loss and clip top-1 over all processes' clips."""
    return epochs.train_one_epoch(model, criterion, optimizer, scaler, loader, ctx, epoch, lr, args, log, to_device,
                                  guard=guard, progress=progress, save=save, unit="clips", accuracy="clip top-1")


@torch.no_grad()
def evaluate(model, loader, ctx, args, log):
    """Clip top-1 / top-5 / mean loss on each validation video's centre clip: every video once, summed over
    processes."""
    model.eval()
    start = time.time()

    def report(i, loss_sum, correct1, correct5, count):
        elapsed = time.time() - start
        log.info(f"Test [{i + 1}/{len(loader)}]  clip top-1 {percent(correct1, count):.3f}  "
                 f"clip top-5 {percent(correct5, count):.3f}  "
                 f"{count * ctx.world_size / max(elapsed, 1e-9):.1f} clips/s  "
                 f"eta {format_seconds(elapsed / (i + 1) * (len(loader) - i - 1))}")
    stats = classifier_stats(model, loader, ctx, args, to_device, report)
    log.info(f" * Clip Prec@1 {stats['top1']:.3f} Clip Prec@5 {stats['top5']:.3f}  loss {stats['loss']:.4f}  "
             f"({stats['n']} centre clips)")
    return stats


def load_data(args, ctx):
    train_set, val_set, test_set, info = build_data(args, ctx)
    train_loader, val_loader, train_sampler = build_loaders(train_set, val_set, args.batch_size, args.workers,
                                                            distributed=ctx.distributed, seed=args.seed)
    return dict(train_set=train_set, val_set=val_set, test_set=test_set, info=info, train_loader=train_loader,
                val_loader=val_loader, train_sampler=train_sampler)


def evaluate_all(model, data, ctx, args, log, with_test):
    """Centre-clip validation; with_test: the multi-clip test too. One stats dict (video_* keys if tested)."""
    stats = evaluate(model, data["val_loader"], ctx, args, log)
    if with_test:
        stats.update(evaluate_videos(model, test_loader_of(data["test_set"], ctx, args), ctx, args, log))
    return stats


def validate_checkpoint(args, ctx, log):
    """--valid: evaluate --check_path, rebuilt from its stored constructor arguments (flags that ask for another
    model are refused)."""
    log.heading("=> validation mode")
    checkpoint = load_checkpoint(args.check_path)
    require_task(checkpoint, args.check_path, "video")
    check_dataset(checkpoint, args.check_path, args.dataset)
    data = load_data(args, ctx)
    saved = checkpoint.get("model_args")
    if not saved:
        raise ConfigError(f"{args.check_path} has no model arguments: it was not written by train_video.py")
    check_requested_model(saved, args.check_path, args, model_kwargs(args, saved["num_classes"]), build_model)
    model = build_model(**saved)
    load_state_dict_checked(model, checkpoint["state_dict"])
    if saved["num_classes"] != data["info"].num_classes:
        raise ConfigError(f"{args.check_path} has {saved['num_classes']} classes, {args.dataset} "
                          f"{data['info'].num_classes}")
    log.info(f"=> loaded {args.check_path} (epoch {checkpoint.get('epoch', '?')}); evaluating "
             f"{len(data['val_set'])} videos")
    _, _, eval_model = prepare_video_model(model, args, ctx, log)
    stats = evaluate_all(eval_model, data, ctx, args, log, with_test=True)
    log.heading(f" * Final: clip top-1 {stats['top1']:.3f} top-5 {stats['top5']:.3f} ({stats['n']} centre clips) | "
                f"video top-1 {stats['video_top1']:.3f} top-5 {stats['video_top5']:.3f} ({stats['videos']} videos)")
    return stats


def selects(args):
    """Whether the run selects a best epoch: only on a validation set held out from the test split."""
    return args.validation == "holdout"


def summary_line(best, select=True):
    """The run's closing line: the final evaluation (clip and video) and, when the run selects (select), the best
    validation clip accuracies, separately."""
    if best.last is None:
        return "=> done: no evaluation was run"
    last = best.last
    video = (f", video top-1 {last['video_top1']:.3f} top-5 {last['video_top5']:.3f}"
             if "video_top1" in last else "")
    final = f"=> done: final clip top-1 {last['top1']:.3f} top-5 {last['top5']:.3f}{video} (epoch {last['epoch']})"
    if not select:
        return final + " | no best: the validation set is the test split (--validation test)"
    return (f"{final} | best clip top-1 {best.top1:.3f} (epoch {best.top1_epoch}), best clip top-5 {best.top5:.3f} "
            f"(epoch {best.top5_epoch})")


def log_setup(args, ctx, data, model, schedule, log):
    info, global_batch = data["info"], args.batch_size * ctx.world_size
    params = sum(p.numel() for p in model.parameters()) / 1e6
    frozen = frozen_parameter_count(model) / 1e6
    blocks = f"{args.nl_nums} {args.nl_type} block(s)" if args.nl_nums else "no nonlocal block"
    log.info(f"=> data: {args.dataset} split {args.split}, {len(data['train_set'])} train / {len(data['val_set'])} "
             f"validation / {len(data['test_set'])} test videos, {info.num_classes} classes; clips of {args.clip_len} "
             f"frames every {args.frame_step} at {args.frame_size}px, {args.test_clips} clips per test video")
    log.info(f"=> validation (--validation {args.validation}): {info.val_from}")
    if not selects(args):
        log.info("=> --validation test: the per-epoch validation is the test split, so nothing is selected on it: "
                 "no model_best.pth.tar and no best accuracy, only the final one")
    log.info(f"=> model: {args.backbone}-{args.arch} with {blocks}, {params:.2f}M parameters ({frozen:.2f}M frozen: "
             f"--ft-begin-index {args.ft_begin_index})")
    log.info(f"=> batch size {args.batch_size} per process x {ctx.world_size} process(es) = global batch "
             f"{global_batch}; {args.epochs} epochs, lr {schedule.base_lr:.6g} x {args.lr_gamma} at epochs "
             f"{args.lr_steps}, momentum {args.momentum}, dampening {args.dampening}, weight decay {args.weight_decay}")
    if ctx.world_size > 1 and args.lr_scale == "none":
        log.warn(f"the lr is not rescaled for the global batch {global_batch} (the recipe assumes "
                 f"{VIDEO_RECIPES[args.recipe]['batch_size']}); pass --lr-scale linear to scale it")


def train(args, ctx, log):
    run_dir = run_folder(args)
    log.heading(f"=> torch {torch.__version__}, device {ctx.device}, {ctx.world_size} process(es), run folder "
                f"{run_dir}")
    # One run per folder; signals checkpoint and stop; every rank's errors reach the log.
    return epochs.guarded_run(run_dir, ctx, log, args, lambda guard: _train(args, ctx, log, run_dir, guard))


def _train(args, ctx, log, run_dir, guard):
    resume_path = from_main(ctx, lambda: resume_source(args, run_dir, log))
    data = load_data(args, ctx)
    checkpoint = load_checkpoint(resume_path) if resume_path else None
    if checkpoint is not None:
        require_task(checkpoint, resume_path, "video")
        check_dataset(checkpoint, resume_path, args.dataset)
    # A resumed model's weights come from its checkpoint: pretrained weights are not loaded again.
    model = build_model(**model_kwargs(args, data["info"].num_classes, None if checkpoint else args.pretrained))
    if checkpoint is not None:
        load_resumed_weights(checkpoint, resume_path, model)
        check_resume_settings(checkpoint, resume_path, args, log, resumable=VIDEO_RESUMABLE,
                              world_size=ctx.world_size)  # same settings?
    freeze_for_fine_tuning(model, args.ft_begin_index)
    model, train_model, eval_model = prepare_video_model(model, args, ctx, log)
    schedule = epochs.step_schedule(args, ctx, VIDEO_RECIPES[args.recipe]["batch_size"])
    optimizer = torch.optim.SGD(trainable_parameters(model), lr=schedule.lr_at(0),
                                momentum=args.momentum, dampening=args.dampening, weight_decay=args.weight_decay)
    scaler = torch.amp.GradScaler(ctx.device.type) if args.amp == "fp16" else None
    start_epoch, best, resumed_inside = epochs.resumed_state(checkpoint, resume_path, optimizer, scaler, ctx, args,
                                                             log, guard)
    log_setup(args, ctx, data, model, schedule, log)
    work = has_work(start_epoch, args.epochs, (checkpoint or {}).get("pending_eval"))  # else write no records

    # Only now, with data, model and checkpoint loaded, is anything written: a failed start leaves no trace.
    metrics, writer = epochs.open_records(run_dir, args, ctx, log, checkpoint, resume_path, start_epoch, work)
    epochs.restore_process_rng(checkpoint, ctx, args, start_epoch, log)
    criterion = build_criterion(args)

    def finish_epoch(finished, record, started, due):
        """Evaluate (if due; with the multi-clip test after the last epoch), log and checkpoint `finished` epochs
        (lib.engine.epochs.evaluated: a stop or a bad input before the evaluation is done checkpoints the trained
        epoch as awaiting it)."""
        is_best = False
        if due:
            stats = epochs.evaluated(
                lambda: evaluate_all(eval_model, data, ctx, args, log, with_test=finished == args.epochs), finished,
                guard, writer,
                lambda: save_checkpoint(run_dir, finished, False, model, optimizer, scaler, schedule, best, args, ctx,
                                        log, pending_eval=dict(record, time=time.time() - started)))
            if selects(args):
                is_best = best.update(finished, stats)
                log.info(f" * Best clip accuracy: Prec@1 {best.top1:.3f} (epoch {best.top1_epoch}), Prec@5 "
                         f"{best.top5:.3f} (epoch {best.top5_epoch})")
            else:  # the test split: its numbers are reported as they come, never selected on
                best.last = dict(stats, epoch=finished)
            row = dict(record, epoch=finished, clip_top1=stats["top1"], clip_top5=stats["top5"], loss=stats["loss"],
                       time=time.time() - started)
            tags = [("Clip Top1", "top1"), ("Clip Top5", "top5"), ("Test Loss", "loss")]
            if "video_top1" in stats:
                row.update(video_top1=stats["video_top1"], video_top5=stats["video_top5"])
                tags += [("Video Top1", "video_top1"), ("Video Top5", "video_top5")]
            if writer is not None:
                for tag, key in tags:
                    writer.add_scalar(tag, stats[key], finished)
            metrics.append(row)
        if writer is not None:
            writer.flush()
        guard.saved(save_checkpoint(run_dir, finished, is_best, model, optimizer, scaler, schedule, best, args,
                                    ctx, log))

    def train_epoch(epoch, lr, progress):
        def save_inside(progress):
            return save_checkpoint(run_dir, epoch, False, model, optimizer, scaler, schedule, best, args, ctx, log,
                                   progress=progress)
        return train_one_epoch(train_model, criterion, optimizer, scaler, data["train_loader"], ctx, epoch, lr, args,
                               log, guard=guard, progress=progress, save=save_inside)

    epochs.run_epochs(args, start_epoch, checkpoint, resumed_inside, schedule, optimizer, data["train_sampler"],
                      writer, log, train_epoch, finish_epoch)
    epochs.warn_if_nothing_left(run_dir, args, ctx, log, start_epoch)
    log.heading(summary_line(best, selects(args)))
    return best.last


def main(args):
    """Train (or with --valid, evaluate); returns the final evaluation's stats. Raises ConfigError for bad input."""
    args = resolve_video_args(valid_dataset_from_checkpoint(args, "video"))
    return run_main(args, LAUNCHER_PID, lambda args: check_model_flags(args, build_model), validate_checkpoint,
                    train)


def cli_main(argv=None):
    """Entry point: returns the exit status (0; 2 for bad input or a failed write, 3 for a diverged run, 75 when
    stopped by a signal after a checkpoint) with a one-line message."""
    return run_cli(main, parse_video_args, "train_video.py", argv)


if __name__ == "__main__":
    sys.exit(cli_main())
