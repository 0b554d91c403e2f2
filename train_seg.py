#!/usr/bin/env python3
"""Train and evaluate semantic segmentation with a nonlocal decode head (SNL and the others) on Cityscapes.

    python train_seg.py --dataset cityscapes --data_dir DATA --backbone resnet --arch 50 --nl-type snl --checkpoints snl
    torchrun --nproc_per_node 4 train_seg.py --config configs/cityscapes_r50_snl.yaml --data_dir DATA --sync-bn
    python train_seg.py --valid --check_path save_model/cityscapes/resnet50/snl/model_best.pth.tar --data_dir DATA
    python train_seg.py --dataset fake --iters 20 --eval-every 10        # smoke run, no data needed

Iteration-based, with the authors' mmsegmentation recipe (lib/engine/segmentation/cli.py) filling unset flags; the
run itself is lib/engine's lifecycle (lifecycle.main; the functions of this module are what the task gives it);
outputs go to <output-dir>/<dataset>/<backbone><arch>/<checkpoints>/. Layout as train_val.py: get_args_parser(),
train_one_step() / train_iterations(), evaluate(), main(args). See docs/segmentation.md.
"""
import os

LAUNCHER_PID = os.getppid()  # first thing: under torchrun, a launcher that dies during the imports is noticed

import math
import sys
import time
from functools import partial

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lib.data import loader_options
from lib.data.cityscapes import CLASSES, SegmentationSet, build_cityscapes
from lib.data.fake_scenes import SPLIT_SIZES, FakeScenes
from lib.data.iteration_sampler import IterationBatchSampler
from lib.data.samplers import ContiguousShardSampler
from lib.data.seg_transforms import SegPipeline
from lib.engine import lifecycle
from lib.engine.distributed import all_reduce_sums
from lib.engine.metrics import format_seconds
from lib.engine.preemption import EpochProgress, fetch_batch
from lib.engine.resume_check import RESUMABLE, valid_dataset_from_checkpoint
from lib.engine.run_files import IterationFiles
from lib.engine.run_state import check_model_flags, checkpoint_to_validate, model_kwargs, run_folder
from lib.engine.runtime import LossCheck, autocast, cpu_threads_note, optimizer_step, prepare_model, run_cli
from lib.engine.schedule import set_lr
from lib.engine.segmentation.cli import get_args_parser, parse_seg_args, resolve_seg_args  # noqa: F401
from lib.engine.segmentation.loss import SegLoss
from lib.engine.segmentation.metrics import all_reduce_confusion, confusion_matrix, json_number, segmentation_metrics
from lib.engine.segmentation.poly import PolySchedule
from lib.engine.segmentation.run import best_line, miou_tracker, summary_line  # noqa: F401  (task hooks)
from models.checkpoints import rebuild_model
from models.segmentation import build_segmentor, load_segmentor_state

NUM_CLASSES = len(CLASSES)


def build_criterion(args):
    return SegLoss(args.aux_weight)


def pipeline_of(args):
    return SegPipeline(img_scale=tuple(args.img_scale), crop_size=tuple(args.crop_size),
                       ratio_range=tuple(args.ratio_range), cat_max_ratio=args.cat_max_ratio, hflip=args.hflip,
                       photometric=args.photometric)


def build_seg_datasets(args, train=True):
    """(train_set, val_set) for --dataset (train=False: (None, val_set), e.g. for --valid, which needs only the
    validation split); ConfigError, on one line, for a missing or incomplete dataset."""
    pipeline = pipeline_of(args)
    if args.dataset == "fake":
        return (SegmentationSet(FakeScenes(SPLIT_SIZES["train"], "train"), True, pipeline) if train else None,
                SegmentationSet(FakeScenes(SPLIT_SIZES["val"], "val"), False, pipeline))
    return build_cityscapes(args.data_dir, pipeline, train=train)


def val_loader_of(val_set, ctx, args):
    # Batch 1: validation images may differ in size; each process evaluates a contiguous shard, no padding.
    sampler = ContiguousShardSampler(val_set, ctx.world_size, ctx.rank)
    return DataLoader(val_set, batch_size=1, sampler=sampler, **loader_options(args.workers, ctx.device, args.seed))


def train_loader_of(train_set, ctx, args, start_iter):
    sampler = IterationBatchSampler(len(train_set), args.batch_size, args.iters, start_iter, ctx.rank,
                                    ctx.world_size, args.seed)
    return DataLoader(train_set, batch_sampler=sampler, **loader_options(args.workers, ctx.device, args.seed))


def segmentor_kwargs(args, pretrained=None):
    """build_segmentor's keyword arguments from the flags."""
    return model_kwargs(args, NUM_CLASSES, pretrained, aux=args.aux_weight > 0)


def train_one_step(model, criterion, optimizer, scaler, images, target, ctx, args, iteration):
    """Forward, loss, backward, SGD step; returns (loss, {part: loss}) as tensors on the device (read when printed;
    the caller checks that the loss is finite at the next agreement of the processes, lib.engine.runtime.LossCheck)."""
    images = images.to(ctx.device, non_blocking=True)
    target = target.to(ctx.device, non_blocking=True)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with autocast(ctx.device, args.amp):
        outputs = model(images)
    loss, parts = criterion(outputs, target)
    optimizer_step(loss, optimizer, scaler)
    return loss.detach(), {name: value.detach() for name, value in parts.items()}


def train_iterations(model, criterion, optimizer, scaler, batches, start, stop, schedule, ctx, args, log,
                     guard=None, progress=None, save=None):
    """Iterations [start, stop) from the batch iterator; returns the mean loss over all processes of the iterations
    since the last evaluation (progress: those done before start, by a run resumed between evaluations).

    guard: a RunGuard consulted before every iteration; it may call save(iteration, progress) (a checkpoint
    between evaluations) and stop the run (Preempted). Without one, an error reading a batch is raised at once.
    """
    model.train()
    progress = progress or EpochProgress()
    count, began, seconds_before, loss_check = 0, time.time(), progress.seconds, None
    for iteration in range(start, stop):
        lr = schedule.lr_at(iteration)
        set_lr(optimizer, lr)
        batch, error = fetch_batch(batches)
        if guard is not None:
            guard.at_boundary(iteration, lambda: save(iteration, progress), f"iteration {iteration}", error,
                              loss_check)
        elif error is not None:
            raise error
        images, target = batch
        loss, parts = train_one_step(model, criterion, optimizer, scaler, images, target, ctx, args, iteration)
        loss_check = LossCheck(loss, f"at iteration {iteration + 1}: run stopped, the last checkpoint is kept")
        progress.add(loss, 0, 1)
        count, elapsed = count + 1, time.time() - began
        progress.seconds = seconds_before + elapsed
        if guard is not None:
            guard.step_done()
        done = iteration + 1
        if done % args.print_freq == 0 or done == stop:
            shown = "  ".join(f"{name} {value.item():.4f}" for name, value in parts.items())
            log.info(f"Iter [{done}/{args.iters}]  loss {loss.item():.4f} ({progress.mean_loss():.4f})"
                     f"  {shown}  lr {lr:.6g}  {count * args.batch_size * ctx.world_size / max(elapsed, 1e-9):.2f} "
                     f"img/s  eta {format_seconds(elapsed / count * (args.iters - done))}"
                     + (cpu_threads_note(ctx.device) if count <= args.print_freq else ""))
    if loss_check is not None:
        loss_check.raise_if_any(ctx)  # the last step, before the checkpoint that follows an interval
    loss_sum, count = all_reduce_sums(ctx, [progress.loss_sum, progress.count])
    return loss_sum / max(count, 1)


@torch.no_grad()
def evaluate(model, loader, ctx, args, log):
    """mIoU, per-class IoU, pixel accuracy over the whole validation set (every image once, summed over
    processes). Logits are resized to the label's resolution before the argmax."""
    model.eval()
    matrix = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
    images_seen = 0
    for i, (images, target) in enumerate(loader):
        images = images.to(ctx.device, non_blocking=True)
        if args.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(ctx.device, args.amp):
            logits = model(images)["out"]
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
        matrix += confusion_matrix(logits.argmax(dim=1).cpu(), target, NUM_CLASSES)
        images_seen += images.size(0)
        if (i + 1) % args.print_freq == 0:
            log.info(f"Test [{i + 1}/{len(loader)}]")
    matrix = all_reduce_confusion(matrix, ctx)
    stats = segmentation_metrics(matrix)
    stats["images"] = int(all_reduce_sums(ctx, [images_seen])[0])
    width = max(len(name) for name in CLASSES)
    log.info("per-class IoU / Acc:")
    for name, iou, acc in zip(CLASSES, stats["IoU"], stats["Acc"]):
        log.info(f"  {name:<{width}}  {iou:6.2f}  {acc:6.2f}")
    log.info(f" * mIoU {stats['mIoU']:.2f}  mAcc {stats['mAcc']:.2f}  aAcc {stats['aAcc']:.2f}  "
             f"({stats['images']} images, {stats['pixels']} labelled pixels)")
    return stats


def metrics_record(stats):
    """The metrics.jsonl row of an evaluation: per-class IoU / Acc by class name (null = absent from prediction and
    truth)."""
    return {"mIoU": json_number(stats["mIoU"]), "mAcc": json_number(stats["mAcc"]),
            "aAcc": json_number(stats["aAcc"]), "pixels": stats["pixels"], "images": stats["images"],
            "IoU": {name: json_number(v) for name, v in zip(CLASSES, stats["IoU"])},
            "Acc": {name: json_number(v) for name, v in zip(CLASSES, stats["Acc"])}}


def tensorboard_scalars(stats, record):
    scalars = [("Train Loss", record["train_loss"]), ("LR", record["lr"]), ("mIoU", stats["mIoU"]),
               ("mAcc", stats["mAcc"]), ("aAcc", stats["aAcc"])]
    # a class absent from prediction and truth has no IoU
    return scalars + [(f"IoU/{name}", value) for name, value in zip(CLASSES, stats["IoU"]) if not math.isnan(value)]


def validate_checkpoint(args, ctx, log):
    """--valid: evaluate --check_path, rebuilt from its stored constructor arguments (else from the flags)."""
    checkpoint = checkpoint_to_validate(args, "segmentation", log)
    _, val_set = build_seg_datasets(args, train=False)
    model = rebuild_model(checkpoint, segmentor_kwargs(args), source=args.check_path)
    log.info(f"=> loaded {args.check_path} (iteration {checkpoint.get('iteration', '?')}); evaluating "
             f"{len(val_set)} images")
    _, _, eval_model = prepare_model(model, args, ctx, log)
    stats = evaluate(eval_model, val_loader_of(val_set, ctx, args), ctx, args, log)
    log.heading(f" * Final: mIoU {stats['mIoU']:.2f}, aAcc {stats['aAcc']:.2f} ({stats['images']} images)")
    return stats


def log_setup(args, ctx, data, model, schedule, log):
    train_set, val_set = data["train_set"], data["val_set"]
    params = sum(p.numel() for p in model.parameters()) / 1e6
    log.info(f"=> data: {args.dataset}, {len(train_set)} train / {len(val_set)} val images, crop "
             f"{args.crop_size[0]}x{args.crop_size[1]}, scale {args.img_scale} x {args.ratio_range}")
    log.info(f"=> model: {args.backbone}-{args.arch} (output stride 8) + {args.nl_type or 'plain FCN'} head, "
             f"aux weight {args.aux_weight}, {params:.2f}M parameters")
    log.info(f"=> batch size {args.batch_size} per process x {ctx.world_size} process(es) = global batch "
             f"{args.batch_size * ctx.world_size}; {args.iters} iterations, lr {args.lr:g} poly (power "
             f"{args.power:g}, min {args.min_lr:g}), evaluation every {args.eval_every}")


# ---- what this task gives the run lifecycle (lib/engine/__init__.py says what each name is for) ----
TASK, STEP_FILES, TOTAL_FLAG = "segmentation", IterationFiles, "iters"
RESUMABLE_SETTINGS = RESUMABLE  # not: more --iters (the poly schedule depends on their number)
tracker, summary, task_run_folder, load_weights = miou_tracker, summary_line, run_folder, load_segmentor_state


def resolve(args):
    return resolve_seg_args(valid_dataset_from_checkpoint(args, TASK))


def check_model(args):
    check_model_flags(build_segmentor, segmentor_kwargs(args))


def load_data(args, ctx):
    train_set, val_set = build_seg_datasets(args)
    return dict(train_set=train_set, val_set=val_set, val_loader=val_loader_of(val_set, ctx, args))


def create_model(args, data, pretrained):
    return build_segmentor(**segmentor_kwargs(args, pretrained))


def lr_schedule(args, ctx):
    return PolySchedule(args.lr, args.iters, args.power, args.min_lr)


def create_optimizer(model, args, lr):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=args.momentum, weight_decay=args.weight_decay)


def train_batches(run):
    return iter(train_loader_of(run.data["train_set"], run.ctx, run.args, run.start))


def train_steps(run, batches, start, stop, progress, save):
    return train_iterations(run.train_model, run.criterion, run.optimizer, run.scaler, batches, start, stop,
                            run.schedule, run.ctx, run.args, run.log, run.guard, progress, save)


def evaluate_run(run, finished):
    return evaluate(run.eval_model, run.data["val_loader"], run.ctx, run.args, run.log)


def selects(args):
    return True


def record(stats, record):
    return metrics_record(stats), tensorboard_scalars(stats, record)


def main(args):  # train (or with --valid, evaluate): the final evaluation's stats; ConfigError for bad input
    return lifecycle.main(sys.modules[__name__], args, LAUNCHER_PID)


cli_main = partial(run_cli, main, parse_seg_args, "train_seg.py")  # the exit status and a one-line message

if __name__ == "__main__":
    sys.exit(cli_main())
