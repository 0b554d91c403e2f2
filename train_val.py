#!/usr/bin/env python3
"""Train and evaluate PreResNet / ResNet with nonlocal blocks (SNL and the blocks it is compared against).

    python train_val.py --dataset cifar10 --backbone preresnet --arch 20 --nl-type snl --is_norm --is_sys
    torchrun --nproc_per_node 8 train_val.py --dataset imagenet --backbone resnet --arch 50 --nl-type snl
    python train_val.py --valid --check_path CHECKPOINT --dataset cifar10 ...

The reference's command lines keep working (lib/engine/cli.py); the per-dataset recipe fills unset flags
(lib/engine/recipe.py). Outputs go to <output-dir>/<dataset>/<arch>/<checkpoints>/. Layout as torchvision's
references/classification/train.py: get_args_parser(), train_one_epoch(), evaluate(), main(args).
"""
import os

LAUNCHER_PID = os.getppid()  # first thing: under torchrun, a launcher that dies during the imports is noticed

import sys  # noqa: E402  (these imports follow the launcher's pid)
import time

import torch
from torch import nn

from lib.data import build_datasets, build_loaders
from lib.engine import epochs
from lib.engine.checkpoint import load_checkpoint
from lib.engine.cli import get_args_parser  # noqa: F401  (the torchvision-style entry points live here)
from lib.engine.config import parse_args
from lib.engine.distributed import from_main, local_main_first
from lib.engine.evaluation import classifier_stats
from lib.engine.metrics import percent
from lib.engine.recipe import RECIPES, recipe_line, resolve_args
from lib.engine.resume_check import check_resume_settings, has_work, valid_dataset_from_checkpoint
from lib.engine.run_state import (check_dataset, check_model_flags, check_requested_model, load_resumed_weights,
                                  model_kwargs, resume_source, run_folder, save_checkpoint, summary_line)
from lib.engine.runtime import prepare_model, run_cli, run_main
from lib.engine.tasks import require_task
from lib.errors import ConfigError
from models import build_model, classifier_size, load_state_dict_checked, with_output_relu


def build_criterion(args):
    return nn.CrossEntropyLoss()


def _to_device(images, target, ctx, args):
    images = images.to(ctx.device, non_blocking=True)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, target.to(ctx.device, non_blocking=True)


def train_one_epoch(model, criterion, optimizer, scaler, loader, ctx, epoch, lr, args, log, guard=None,
                    progress=None, save=None):
    """One pass over the training data (lib.engine.epochs.train_one_epoch on images); returns the epoch's mean loss
    and top-1 over all processes' images."""
    return epochs.train_one_epoch(model, criterion, optimizer, scaler, loader, ctx, epoch, lr, args, log, _to_device,
                                  guard=guard, progress=progress, save=save)


@torch.no_grad()
def evaluate(model, loader, ctx, args, log):
    """Top-1 / top-5 / mean loss over the whole validation set: every image once, summed over processes."""
    model.eval()

    def report(i, loss_sum, correct1, correct5, count):
        log.info(f"Test [{i + 1}/{len(loader)}]  top-1 {percent(correct1, count):.3f}  "
                 f"top-5 {percent(correct5, count):.3f}")
    stats = classifier_stats(model, loader, ctx, args, _to_device, report)
    log.info(f" * Prec@1 {stats['top1']:.3f} Prec@5 {stats['top5']:.3f}  loss {stats['loss']:.4f}  "
             f"({stats['n']} images)")
    return stats


def load_data(args, ctx):
    # Local rank 0 first: a CIFAR download must not run in several processes into the same folder at once.
    train_set, val_set, info = local_main_first(
        ctx, lambda: build_datasets(args.dataset, args.data_dir, args.input_size, download=args.download,
                                    hflip=args.hflip))
    loaders = build_loaders(train_set, val_set, args.batch_size, args.workers, distributed=ctx.distributed,
                            seed=args.seed)
    return (train_set, val_set, info) + tuple(loaders)


def validate_checkpoint(args, ctx, log):
    """--valid: evaluate --check_path (ours: rebuilt from its stored constructor args; the reference's: from the
    command-line flags, with the classifier size the checkpoint has)."""
    log.heading("=> validation mode")
    checkpoint = load_checkpoint(args.check_path)
    require_task(checkpoint, args.check_path, "classification")
    check_dataset(checkpoint, args.check_path, args.dataset)
    _, val_set, info, _, val_loader, _ = load_data(args, ctx)
    saved = checkpoint.get("model_args")
    if saved:
        saved = with_output_relu(saved)  # a checkpoint from before it was stored
        check_requested_model(saved, args.check_path, args, model_kwargs(args, saved["num_classes"]), build_model)
        model = build_model(**saved)
    else:
        model = build_model(**model_kwargs(args, classifier_size(checkpoint["state_dict"])))
    load_state_dict_checked(model, checkpoint["state_dict"])
    if model.build_args["num_classes"] < info.num_classes:
        raise ConfigError(f"{args.check_path} has {model.build_args['num_classes']} classes, {args.dataset} "
                          f"{info.num_classes}")
    log.info(f"=> loaded {args.check_path} (epoch {checkpoint.get('epoch', '?')}); evaluating {len(val_set)} images")
    _, _, eval_model = prepare_model(model, args, ctx, log)
    stats = evaluate(eval_model, val_loader, ctx, args, log)
    log.heading(f" * Final Accuracy: Prec@1 {stats['top1']:.3f}, Prec@5 {stats['top5']:.3f} ({stats['n']} images)")
    return stats


def log_setup(args, ctx, info, train_set, val_set, model, schedule, log):
    global_batch = args.batch_size * ctx.world_size
    params = sum(p.numel() for p in model.parameters()) / 1e6
    blocks = f"{args.nl_nums} {args.nl_type} block(s)" if args.nl_nums else "no nonlocal block"
    log.info(f"=> data: {args.dataset}, {len(train_set)} train / {len(val_set)} val images, {info.num_classes} "
             f"classes, input {info.input_size}px")
    log.info(f"=> model: {args.backbone}-{args.arch} with {blocks}, {params:.2f}M parameters")
    warmup = f" ({args.warmup_epochs} warm-up from lr {schedule.warmup_start_lr:.6g})" if args.warmup_epochs else ""
    log.info(recipe_line(args))
    log.info(f"=> batch size {args.batch_size} per process x {ctx.world_size} process(es) = global batch "
             f"{global_batch}; {args.epochs} epochs{warmup}, lr {schedule.base_lr:.6g} x {args.lr_gamma} at epochs "
             f"{args.lr_steps}")
    if ctx.world_size > 1 and args.lr_scale == "none":
        log.warn(f"the lr is not rescaled for the global batch {global_batch} (the recipe assumes "
                 f"{RECIPES[args.recipe]['batch_size']}); pass --lr-scale linear to scale it")
    if args.debug:
        log.warn("debug mode")
        log.info(str(model))


def train(args, ctx, log):
    run_dir = run_folder(args)
    log.heading(f"=> torch {torch.__version__}, device {ctx.device}, {ctx.world_size} process(es), run folder "
                f"{run_dir}")
    if args.num_gpu > 1:
        log.warn("--num_gpu is superseded: launch with torchrun --nproc_per_node N for N GPUs; running 1 process")
    # One run per folder; signals checkpoint and stop; every rank's errors reach the log.
    return epochs.guarded_run(run_dir, ctx, log, args, lambda guard: _train(args, ctx, log, run_dir, guard))


def _train(args, ctx, log, run_dir, guard):
    resume_path = from_main(ctx, lambda: resume_source(args, run_dir, log))
    train_set, val_set, info, train_loader, val_loader, train_sampler = load_data(args, ctx)
    checkpoint = load_checkpoint(resume_path) if resume_path else None
    if checkpoint is not None:
        require_task(checkpoint, resume_path, "classification")
        check_dataset(checkpoint, resume_path, args.dataset)
    # A resumed model's weights come from its checkpoint: pretrained weights are not loaded again.
    model = build_model(**model_kwargs(args, info.num_classes, None if checkpoint else args.pretrained))
    if checkpoint is not None:
        load_resumed_weights(checkpoint, resume_path, model)
        check_resume_settings(checkpoint, resume_path, args, log, world_size=ctx.world_size)  # same settings?
    model, train_model, eval_model = prepare_model(model, args, ctx, log)
    schedule = epochs.step_schedule(args, ctx, RECIPES[args.recipe]["batch_size"])
    optimizer = torch.optim.SGD(model.parameters(), lr=schedule.lr_at(0), momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scaler = torch.amp.GradScaler(ctx.device.type) if args.amp == "fp16" else None
    start_epoch, best, resumed_inside = epochs.resumed_state(checkpoint, resume_path, optimizer, scaler, ctx, args,
                                                             log, guard)
    log_setup(args, ctx, info, train_set, val_set, model, schedule, log)
    work = has_work(start_epoch, args.epochs, (checkpoint or {}).get("pending_eval"))  # else write no records

    # Only now, with data, model and checkpoint loaded, is anything written: a failed start leaves no trace.
    metrics, writer = epochs.open_records(run_dir, args, ctx, log, checkpoint, resume_path, start_epoch, work)
    epochs.restore_process_rng(checkpoint, ctx, args, start_epoch, log)
    criterion = build_criterion(args)

    def finish_epoch(finished, record, started, due):
        """Evaluate (if due), log and checkpoint `finished` epochs (lib.engine.epochs.evaluated: a stop or a bad
        input before the evaluation is done checkpoints the trained epoch as awaiting it)."""
        is_best = False
        if due:
            stats = epochs.evaluated(
                lambda: evaluate(eval_model, val_loader, ctx, args, log), finished, guard, writer,
                lambda: save_checkpoint(run_dir, finished, False, model, optimizer, scaler, schedule, best, args, ctx,
                                        log, pending_eval=dict(record, time=time.time() - started)))
            is_best = best.update(finished, stats)
            log.info(f" * Best accuracy: Prec@1 {best.top1:.3f} (epoch {best.top1_epoch}), Prec@5 "
                     f"{best.top5:.3f} (epoch {best.top5_epoch})")
            if writer is not None:
                for tag, key in (("Top1", "top1"), ("Top5", "top5"), ("Test Loss", "loss")):
                    writer.add_scalar(tag, stats[key], finished)
            metrics.append(dict(stats, epoch=finished, **record, time=time.time() - started))
        if writer is not None:
            writer.flush()
        guard.saved(save_checkpoint(run_dir, finished, is_best, model, optimizer, scaler, schedule, best, args,
                                    ctx, log))

    def train_epoch(epoch, lr, progress):
        def save_inside(progress):
            return save_checkpoint(run_dir, epoch, False, model, optimizer, scaler, schedule, best, args, ctx, log,
                                   progress=progress)
        return train_one_epoch(train_model, criterion, optimizer, scaler, train_loader, ctx, epoch, lr, args, log,
                               guard=guard, progress=progress, save=save_inside)

    epochs.run_epochs(args, start_epoch, checkpoint, resumed_inside, schedule, optimizer, train_sampler, writer, log,
                      train_epoch, finish_epoch)
    epochs.warn_if_nothing_left(run_dir, args, ctx, log, start_epoch)
    log.heading(summary_line(best))
    return best.last


def main(args):
    """Train (or with --valid, evaluate); returns the final evaluation's stats. Raises ConfigError for bad input."""
    args = resolve_args(valid_dataset_from_checkpoint(args, "classification"))
    return run_main(args, LAUNCHER_PID, check_model_flags, validate_checkpoint, train)


def cli_main(argv=None):
    """Entry point: returns the exit status (0; 2 for bad input or a failed write, 3 for a diverged run, 75 when
    stopped by a signal after a checkpoint) with a one-line message."""
    return run_cli(main, parse_args, "train_val.py", argv)


if __name__ == "__main__":
    sys.exit(cli_main())
