#!/usr/bin/env python3
"""Train and evaluate PreResNet / ResNet with nonlocal blocks (SNL and the blocks it is compared against).

    python train_val.py --dataset cifar10 --backbone preresnet --arch 20 --nl-type snl --is_norm --is_sys
    torchrun --nproc_per_node 8 train_val.py --dataset imagenet --backbone resnet --arch 50 --nl-type snl
    python train_val.py --valid --check_path CHECKPOINT --dataset cifar10 ...

The reference's command lines keep working (lib/engine/classification/cli.py); the per-dataset recipe fills
unset flags (lib/engine/classification/recipe.py). The run itself is lib/engine's lifecycle (lifecycle.main; the
functions of this module are what the task gives it). Outputs go to <output-dir>/<dataset>/<arch>/<checkpoints>/.
Layout as torchvision's references/classification/train.py: get_args_parser(), train_one_epoch(), evaluate(),
main(args).
"""
import os

LAUNCHER_PID = os.getppid()  # first thing: under torchrun, a launcher that dies during the imports is noticed

import sys
from functools import partial

import torch
from torch import nn

from lib.data import build_datasets
from lib.engine import epochs, lifecycle
from lib.engine.classification.cli import get_args_parser, parse_args  # noqa: F401  (torchvision-style entry point)
from lib.engine.classification.recipe import RECIPES, recipe_line, resolve_args
from lib.engine.classification.run import accuracy_tracker, best_line, summary_line  # noqa: F401  (task hooks)
from lib.engine.distributed import local_main_first
from lib.engine.evaluation import classifier_stats
from lib.engine.metrics import percent
from lib.engine.resume_check import EPOCH_BASED, RESUMABLE, valid_dataset_from_checkpoint
from lib.engine.run_files import EpochFiles
from lib.engine.run_state import (
    check_model_flags,
    check_requested_model,
    checkpoint_to_validate,
    model_kwargs,
    run_folder,
)
from lib.engine.runtime import prepare_model, run_cli
from lib.errors import ConfigError
from models import build_model, load_state_dict_checked, with_output_relu
from models.checkpoints import rebuild_model, reference_notice
from models.common import reference_unit


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
    return classifier_stats(model, loader, ctx, args, _to_device, report, log)


def load_data(args, ctx):
    # Local rank 0 first: a CIFAR download must not run in several processes into the same folder at once.
    train_set, val_set, info = local_main_first(
        ctx, lambda: build_datasets(args.dataset, args.data_dir, args.input_size, download=args.download,
                                    hflip=args.hflip))
    return epochs.epoch_data(train_set, val_set, info, args, ctx)


def validate_checkpoint(args, ctx, log):
    """--valid: evaluate --check_path (ours: rebuilt from its stored constructor args; the reference's: from the
    command-line flags, with the classifier size the checkpoint has)."""
    checkpoint = checkpoint_to_validate(args, "classification", log)
    data = load_data(args, ctx)
    info = data["info"]
    saved = checkpoint.get("model_args")
    if saved:  # flags given on the command line must ask for the checkpoint's model
        check_requested_model(with_output_relu(saved), args.check_path, args,
                              model_kwargs(args, saved["num_classes"]), build_model)
    model = rebuild_model(checkpoint, model_kwargs(args, None), source=args.check_path, notice=log.info)
    if model.build_args["num_classes"] < info.num_classes:
        raise ConfigError(f"{args.check_path} has {model.build_args['num_classes']} classes, {args.dataset} "
                          f"{info.num_classes}")
    log.info(f"=> loaded {args.check_path} (epoch {checkpoint.get('epoch', '?')}); evaluating {len(data['val_set'])} "
             f"images")
    _, _, eval_model = prepare_model(model, args, ctx, log)
    stats = evaluate(eval_model, data["val_loader"], ctx, args, log)
    log.heading(f" * Final Accuracy: Prec@1 {stats['top1']:.3f}, Prec@5 {stats['top5']:.3f} ({stats['n']} images)")
    return stats


def args_for_checkpoint(args, checkpoint, path, log):
    """A resume from a checkpoint in the reference's layout (no model arguments) trains the reference's block unit
    (models.common.reference_unit) unless --output-relu says otherwise, and says which."""
    if checkpoint.get("model_args"):
        return
    flags = model_kwargs(args, None)
    log.info(reference_notice(path, flags))
    args.output_relu = reference_unit(flags).get("output_relu")


def log_setup(args, ctx, data, model, schedule, log):
    info, train_set, val_set = data["info"], data["train_set"], data["val_set"]
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
    if args.num_gpu > 1:
        log.warn("--num_gpu is superseded: launch with torchrun --nproc_per_node N for N GPUs; running 1 process")
    if args.debug:
        log.warn("debug mode")
        log.info(str(model))


# ---- what this task gives the run lifecycle (lib/engine/__init__.py says what each name is for) ----
TASK, STEP_FILES, TOTAL_FLAG, RESUMABLE_SETTINGS = "classification", EpochFiles, "epochs", RESUMABLE | EPOCH_BASED
tracker, summary, best_line, load_weights = accuracy_tracker, summary_line, best_line, load_state_dict_checked


def resolve(args):
    return resolve_args(valid_dataset_from_checkpoint(args, TASK))


def check_model(args):
    check_model_flags(build_model, model_kwargs(args, 2))


def task_run_folder(args):
    return run_folder(args, str(args.arch))  # the reference's layout: the depth names the backbone


def create_model(args, data, pretrained):
    return build_model(**model_kwargs(args, data["info"].num_classes, pretrained))


def lr_schedule(args, ctx):
    return epochs.step_schedule(args, ctx, RECIPES[args.recipe]["batch_size"])


def create_optimizer(model, args, lr):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=args.momentum, weight_decay=args.weight_decay)


def train_epoch(run, epoch, lr, progress, save):
    return train_one_epoch(run.train_model, run.criterion, run.optimizer, run.scaler, run.data["train_loader"],
                           run.ctx, epoch, lr, run.args, run.log, guard=run.guard, progress=progress, save=save)


def evaluate_run(run, finished):
    return evaluate(run.eval_model, run.data["val_loader"], run.ctx, run.args, run.log)


def selects(args):
    return True


def record(stats, record):
    """The metrics.jsonl fields (beside the training record) and the tensorboard scalars of an evaluation."""
    return dict(stats), [(tag, stats[key]) for tag, key in (("Top1", "top1"), ("Top5", "top5"), ("Test Loss", "loss"))]


def main(args):  # train (or with --valid, evaluate): the final evaluation's stats; ConfigError for bad input
    return lifecycle.main(sys.modules[__name__], args, LAUNCHER_PID)


cli_main = partial(run_cli, main, parse_args, "train_val.py")  # the exit status and a one-line message

if __name__ == "__main__":
    sys.exit(cli_main())
