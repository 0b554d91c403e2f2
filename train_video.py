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

import sys
import time
from functools import partial

import torch
from torch import nn

from lib.data.video import short_video_warning, source_line
from lib.engine import epochs, lifecycle
from lib.engine.classification.run import accuracy_tracker
from lib.engine.classification.run import best_line as accuracy_line
from lib.engine.evaluation import classifier_stats
from lib.engine.metrics import format_seconds, percent
from lib.engine.resume_check import EPOCH_BASED, RESUMABLE, valid_dataset_from_checkpoint
from lib.engine.run_files import EpochFiles
from lib.engine.run_state import (
    check_model_flags,
    check_requested_model,
    checkpoint_to_validate,
    model_kwargs,
    run_folder,
)
from lib.engine.runtime import run_cli
from lib.engine.video.cli import get_args_parser, parse_video_args  # noqa: F401  (torchvision-style entry point)
from lib.engine.video.multiclip import evaluate_videos
from lib.engine.video.recipe import VIDEO_RECIPES, resolve_video_args, valid_clip_from_checkpoint
from lib.engine.video.setup import (
    build_data,
    freeze_for_fine_tuning,
    frozen_parameter_count,
    prepare_video_model,
    test_loader_of,
    to_device,
    trainable_parameters,
)
from lib.errors import ConfigError
from models import build_model, load_state_dict_checked
from models.checkpoints import rebuild_model


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
    return classifier_stats(model, loader, ctx, args, to_device, report, log, kind="Clip ", samples="centre clips")


def load_data(args, ctx):
    train_set, val_set, test_set, info = build_data(args, ctx)
    return epochs.epoch_data(train_set, val_set, info, args, ctx, test_set=test_set)


def evaluate_all(model, data, ctx, args, log, with_test):
    """Centre-clip validation; with_test: the multi-clip test too. One stats dict (video_* keys if tested)."""
    stats = evaluate(model, data["val_loader"], ctx, args, log)
    if with_test:
        stats.update(evaluate_videos(model, test_loader_of(data["test_set"], ctx, args), ctx, args, log))
    return stats


def validate_checkpoint(args, ctx, log):
    """--valid: evaluate --check_path, rebuilt from its stored constructor arguments (flags that ask for another
    model are refused)."""
    checkpoint = checkpoint_to_validate(args, "video", log)
    if getattr(args, "clip_from_checkpoint", None):
        log.info(f"=> clips as the checkpoint's run made them: {args.clip_from_checkpoint}")
    data = load_data(args, ctx)
    saved = checkpoint.get("model_args")
    if saved:  # flags given on the command line must ask for the checkpoint's model
        check_requested_model(saved, args.check_path, args, model_kwargs(args, saved["num_classes"]), build_model)
    model = rebuild_model(checkpoint, source=args.check_path)
    saved = model.build_args
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


def summary_line(best, args):
    """The run's closing line: the final evaluation (clip and video) and, when the run selects, the best
    validation clip accuracies, separately."""
    if best.last is None:
        return "=> done: no evaluation was run"
    last = best.last
    video = (f", video top-1 {last['video_top1']:.3f} top-5 {last['video_top5']:.3f}"
             if "video_top1" in last else "")
    final = f"=> done: final clip top-1 {last['top1']:.3f} top-5 {last['top5']:.3f}{video} (epoch {last['epoch']})"
    if not selects(args):
        return final + " | no best: the validation set is the test split (--validation test)"
    return (f"{final} | best clip top-1 {best.value('top1'):.3f} (epoch {best.step('top1')}), best clip top-5 "
            f"{best.value('top5'):.3f} (epoch {best.step('top5')})")


def log_setup(args, ctx, data, model, schedule, log):
    info, global_batch = data["info"], args.batch_size * ctx.world_size
    params = sum(p.numel() for p in model.parameters()) / 1e6
    frozen = frozen_parameter_count(model) / 1e6
    blocks = f"{args.nl_nums} {args.nl_type} block(s)" if args.nl_nums else "no nonlocal block"
    log.info(f"=> data: {args.dataset} split {args.split}, {len(data['train_set'])} train / {len(data['val_set'])} "
             f"validation / {len(data['test_set'])} test videos, {info.num_classes} classes; clips of {args.clip_len} "
             f"frames every {args.frame_step} at {args.frame_size}px, {args.test_clips} clips per test video")
    log.info("=> " + source_line(info))
    warning = short_video_warning(data["train_set"]) if ctx.is_main else None  # opens videos: rank 0 only
    if warning is not None:
        log.warn("=> " + warning)
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


# ---- what this task gives the run lifecycle (lib/engine/__init__.py says what each name is for) ----
TASK, STEP_FILES, TOTAL_FLAG = "video", EpochFiles, "epochs"
# Settings a resume may change besides train_val.py's: the multi-clip test only measures, it does not train.
RESUMABLE_SETTINGS = RESUMABLE | EPOCH_BASED | {"test_clips"}
tracker, summary, task_run_folder, load_weights = accuracy_tracker, summary_line, run_folder, load_state_dict_checked


def resolve(args):
    return resolve_video_args(valid_clip_from_checkpoint(valid_dataset_from_checkpoint(args, TASK)))


def check_model(args):
    check_model_flags(build_model, model_kwargs(args, 2))


def create_model(args, data, pretrained):
    return build_model(**model_kwargs(args, data["info"].num_classes, pretrained))


def prepare_model(model, args, ctx, log):
    # Frozen before the model is wrapped for DDP, which registers the parameters that receive gradients.
    freeze_for_fine_tuning(model, args.ft_begin_index)
    return prepare_video_model(model, args, ctx, log)


def lr_schedule(args, ctx):
    return epochs.step_schedule(args, ctx, VIDEO_RECIPES[args.recipe]["batch_size"])


def create_optimizer(model, args, lr):
    return torch.optim.SGD(trainable_parameters(model), lr=lr, momentum=args.momentum, dampening=args.dampening,
                           weight_decay=args.weight_decay)


def train_epoch(run, epoch, lr, progress, save):
    return train_one_epoch(run.train_model, run.criterion, run.optimizer, run.scaler, run.data["train_loader"],
                           run.ctx, epoch, lr, run.args, run.log, guard=run.guard, progress=progress, save=save)


def evaluate_run(run, finished):
    """Centre-clip validation; after the last epoch the multi-clip test too."""
    return evaluate_all(run.eval_model, run.data, run.ctx, run.args, run.log, with_test=finished == run.args.epochs)


def best_line(best):
    return accuracy_line(best, "clip accuracy")


def record(stats, record):
    """The metrics.jsonl fields (beside the training record) and the tensorboard scalars of an evaluation."""
    row = dict(clip_top1=stats["top1"], clip_top5=stats["top5"], loss=stats["loss"])
    tags = [("Clip Top1", "top1"), ("Clip Top5", "top5"), ("Test Loss", "loss")]
    if "video_top1" in stats:
        row.update(video_top1=stats["video_top1"], video_top5=stats["video_top5"])
        tags += [("Video Top1", "video_top1"), ("Video Top5", "video_top5")]
    return row, [(tag, stats[key]) for tag, key in tags]


def main(args):  # train (or with --valid, evaluate): the final evaluation's stats; ConfigError for bad input
    return lifecycle.main(sys.modules[__name__], args, LAUNCHER_PID)


cli_main = partial(run_cli, main, parse_video_args, "train_video.py")  # the exit status and a one-line message

if __name__ == "__main__":
    sys.exit(cli_main())
