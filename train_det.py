#!/usr/bin/env python3
"""Train and evaluate Mask R-CNN / Faster R-CNN with nonlocal blocks (SNL and the others) in the ResNet-FPN backbone.

    python train_det.py --dataset coco --data-dir data/coco --model maskrcnn --arch 50 --nl-type snl --pretrained True
    torchrun --nproc_per_node 8 train_det.py --config configs/coco_maskrcnn50_snl.yaml --data-dir data/coco
    python train_det.py --valid --check_path CHECKPOINT --data-dir data/coco --save-predictions results.json
    python train_det.py --dataset fake --output-dir /tmp/smoke              # smoke run, no data needed

torchvision's detection reference recipe fills unset flags (lib/engine/detection/recipe.py). Each epoch trains on
aspect-ratio grouped batches (the loss is the sum of the detector's loss dict) and is evaluated with pycocotools'
COCOeval (box AP, and mask AP for Mask R-CNN, in percent); model_best.pth.tar follows the box AP. The run machinery
(mid-epoch checkpoints, preemption signals, exact resumes, torchrun) is lib/engine's lifecycle, shared with the
other tasks. Outputs go to <output-dir>/<dataset>/<model><arch>/<checkpoints>/. See docs/detection.md.
"""
import os

LAUNCHER_PID = os.getppid()  # first thing: under torchrun, a launcher that dies during the imports is noticed

import json
import sys
import time
from functools import partial

import torch
from torch import nn

from lib.engine import epochs, lifecycle
from lib.engine.detection.cli import get_args_parser, parse_det_args  # noqa: F401  (torchvision-style entry point)
from lib.engine.detection.recipe import RECIPE_BATCH, resolve_det_args
from lib.engine.detection.run import ap_text, ap_tracker, best_line, record, summary_line  # noqa: F401  (hooks)
from lib.engine.detection.setup import IterationWarmup, build_data, share_buffers, to_device
from lib.engine.distributed import from_main, gather_objects
from lib.engine.evaluation import summed_over
from lib.engine.metrics import format_seconds
from lib.engine.resume_check import EPOCH_BASED, RESUMABLE, valid_dataset_from_checkpoint
from lib.engine.run_files import EpochFiles
from lib.engine.run_state import (
    check_model_flags,
    check_requested_model,
    checkpoint_to_validate,
    model_kwargs,
    run_folder,
)
from lib.engine.runtime import autocast, prepare_model, run_cli
from lib.errors import ConfigError
from models import build_model, load_state_dict_checked


class LossSum(nn.Module):
    """The training loss: the sum of the detector's loss dict (classifier, box, mask, objectness, RPN box), as
    torchvision's reference, unweighted."""

    def forward(self, losses):
        return sum(losses.values())


def build_criterion(args):
    return LossSum()


def detector_loss(model, criterion, images, targets):
    """A detector's forward in training: (the summed losses, no logits to score)."""
    return criterion(model(images, targets)), None


def train_one_epoch(model, criterion, optimizer, scaler, loader, ctx, epoch, schedule, args, log, guard=None,
                    progress=None, save=None):
    """One pass over this process's grouped batches (lib.engine.epochs.train_one_epoch, the lr set every iteration:
    the warm-up is counted in iterations); returns the epoch's mean loss over all processes' images."""
    return epochs.train_one_epoch(model, criterion, optimizer, scaler, loader, ctx, epoch, None, args, log,
                                  lambda images, targets, ctx, args: to_device(images, targets, ctx), guard=guard,
                                  progress=progress, save=save, accuracy=None, forward=detector_loss,
                                  lr_at=lambda i, num_batches: schedule.lr_in_epoch(epoch, i, num_batches))


def coco_percent(metrics):
    """COCOeval's 0..1 numbers in percent; its -1 (no ground-truth object of that size) stays -1."""
    return {key: value * 100 if value >= 0 else value for key, value in metrics.items()}


@torch.no_grad()
def predict(model, loader, dataset, ctx, args, log):
    """(this process's COCO results of its shard, images counted over all processes): each process its contiguous
    shard (lib.data.samplers.ContiguousShardSampler); bad input in one process stops all of them together."""
    from lib.engine.detection.evaluation import to_coco_results
    model.eval()
    results, start = [], time.time()

    def measure(batch):
        images, targets = to_device(*batch, ctx)
        with autocast(ctx.device, args.amp):
            outputs = model(images)
        results.extend(to_coco_results(outputs, [int(t["image_id"]) for t in targets], dataset.label_to_category))
        return (len(images),)

    def report(i, count):
        elapsed = time.time() - start
        log.info(f"Test [{i + 1}/{len(loader)}]  {count * ctx.world_size / max(elapsed, 1e-9):.1f} img/s  "
                 f"eta {format_seconds(elapsed / (i + 1) * (len(loader) - i - 1))}")
    (count,) = summed_over(loader, ctx, measure, [0], "evaluation", report, args.print_freq)
    return results, int(count)


def evaluate(model, loader, dataset, ctx, args, log):
    """COCO box (and mask) AP over every validation image once: the processes' results gathered, merged and
    evaluated on rank 0, the numbers shared with every rank. Returns (stats in percent with "n", merged results:
    on rank 0, [] elsewhere)."""
    from lib.engine.detection.evaluation import evaluate_coco, merge_results
    results, count = predict(model, loader, dataset, ctx, args, log)
    gathered = gather_objects(ctx, results)
    merged = merge_results(gathered) if ctx.is_main else []
    iou_types = ("bbox", "segm") if args.model == "maskrcnn" else ("bbox",)

    def coco_eval():
        metrics, text = evaluate_coco(dataset.coco, merged, iou_types, image_ids=dataset.ids)
        # COCOeval's summary table; pycocotools' progress lines ("Loading and preparing results...") left out
        log.info("\n".join(line for line in text.splitlines() if line.startswith((" Average", "bbox", "segm"))))
        return coco_percent(metrics)
    stats = dict(from_main(ctx, coco_eval), n=count)
    log.info(f" * {ap_text(stats)}  ({count} images, {sum(map(len, gathered))} detections)")
    return stats, merged


def det_kwargs(args, num_classes, pretrained=None):
    """build_model's arguments: the detector (--model) on a ResNet-arch FPN, its block, and torchvision's options.
    pretrained None (a resumed or rebuilt model) loads no ImageNet backbone either."""
    kwargs = model_kwargs(args, num_classes, pretrained, trainable_backbone_layers=args.trainable_backbone_layers,
                          frozen_bn=args.frozen_bn, min_size=args.min_size, max_size=args.max_size,
                          pretrained_backbone=bool(args.pretrained_backbone) and pretrained is not None)
    kwargs["backbone"] = args.model  # models.build_model names the detector "backbone"
    return kwargs


def write_predictions(path, results, log):
    with open(path, "w") as f:
        json.dump(results, f)
    log.info(f"=> wrote {len(results)} detections in COCO results format to {path}")


def validate_checkpoint(args, ctx, log):
    """--valid: evaluate --check_path, rebuilt from its stored constructor arguments (flags that ask for another
    model are refused); --save-predictions writes the COCO-format results (rank 0)."""
    checkpoint = checkpoint_to_validate(args, TASK, log)
    saved = checkpoint.get("model_args")
    if not saved:
        raise ConfigError(f"{args.check_path} has no model arguments: it was not written by train_det.py")
    # The label numbering the heads were trained with (COCO ids or 1..K), unless given.
    if "labels_as_ids" not in (getattr(args, "explicit", None) or ()):
        args.labels_as_ids = bool((checkpoint.get("args") or {}).get("labels_as_ids", args.labels_as_ids))
    if "model" in (getattr(args, "explicit", None) or ()) and args.model != saved["backbone"]:
        raise ConfigError(f"{args.check_path} holds a {saved['backbone']} model, not --model {args.model}")
    args.model = saved["backbone"]  # Mask R-CNN's data decodes masks, Faster R-CNN's does not
    data = build_data(args, ctx)
    check_requested_model(saved, args.check_path, args, det_kwargs(args, saved["num_classes"]), build_model)
    if saved["num_classes"] != data["num_classes"]:
        raise ConfigError(f"{args.check_path} has {saved['num_classes']} classes, {args.dataset} "
                          f"{data['num_classes']} (with --labels-as-ids {args.labels_as_ids})")
    model = build_model(**saved)
    load_state_dict_checked(model, checkpoint["state_dict"])
    log.info(f"=> loaded {args.check_path} (epoch {checkpoint.get('epoch', '?')}); evaluating "
             f"{len(data['val_set'])} images")
    _, _, eval_model = prepare_model(model, args, ctx, log)
    stats, merged = evaluate(eval_model, data["val_loader"], data["val_set"], ctx, args, log)
    if args.save_predictions and ctx.is_main:
        write_predictions(args.save_predictions, merged, log)
    log.heading(f" * Final: {ap_text(stats)} ({stats['n']} images)")
    return stats


def log_setup(args, ctx, data, model, schedule, log):
    global_batch = args.batch_size * ctx.world_size
    params = sum(p.numel() for p in model.parameters()) / 1e6
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6
    blocks = f"{args.nl_nums} {args.nl_type} block(s)" if args.nl_nums else "no nonlocal block"
    labels = "= category ids" if args.labels_as_ids else "1..K"
    log.info(f"=> data: {args.dataset}, {len(data['train_set'])} train / {len(data['val_set'])} val images, "
             f"{data['num_classes']} classes with the background (labels {labels}), images resized to "
             f"{args.min_size} (max {args.max_size})")
    log.info(f"=> model: {args.model} {args.backbone}-{args.arch}-FPN with {blocks}, {params:.2f}M parameters "
             f"({trainable:.2f}M trained; {args.trainable_backbone_layers} backbone stages, "
             f"{'frozen' if args.frozen_bn else 'trained'} BN)")
    log.info(f"=> batch size {args.batch_size} per process x {ctx.world_size} process(es) = global batch "
             f"{global_batch}; {args.epochs} epochs, lr {schedule.base_lr:.6g} x {args.lr_gamma} at epochs "
             f"{args.lr_steps}, warm-up {args.warmup_iters} iterations from x {args.warmup_factor}, momentum "
             f"{args.momentum}, weight decay {args.weight_decay}")
    if global_batch != RECIPE_BATCH and args.lr_scale == "none":
        log.warn(f"the lr is not rescaled for the global batch {global_batch} (the recipe's lr is for "
                 f"{RECIPE_BATCH}); pass --lr-scale linear to scale it")


# ---- what this task gives the run lifecycle (lib/engine/__init__.py says what each name is for) ----
TASK, STEP_FILES, TOTAL_FLAG = "detection", EpochFiles, "epochs"
# --save-predictions belongs to --valid only: it never changes a training run.
RESUMABLE_SETTINGS = RESUMABLE | EPOCH_BASED | {"save_predictions"}
tracker, summary, load_weights = ap_tracker, summary_line, load_state_dict_checked


def resolve(args):
    return resolve_det_args(valid_dataset_from_checkpoint(args, TASK))


def check_model(args):
    check_model_flags(build_model, det_kwargs(args, 2))


def task_run_folder(args):
    return run_folder(args, f"{args.model}{args.arch}")


def load_data(args, ctx):
    return build_data(args, ctx)


def create_model(args, data, pretrained):
    return build_model(**det_kwargs(args, data["num_classes"], pretrained))


def lr_schedule(args, ctx):
    return IterationWarmup(epochs.step_schedule(args, ctx, RECIPE_BATCH), args.warmup_iters, args.warmup_factor)


def create_optimizer(model, args, lr):
    # Only what trains: stages left out by --trainable-backbone-layers have requires_grad False.
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=args.momentum,
                           weight_decay=args.weight_decay)


def train_epoch(run, epoch, lr, progress, save):
    return train_one_epoch(run.train_model, run.criterion, run.optimizer, run.scaler, run.data["train_loader"],
                           run.ctx, epoch, run.schedule, run.args, run.log, guard=run.guard, progress=progress,
                           save=save)


def evaluate_run(run, finished):
    share_buffers(run.model, run.ctx)  # the shards are evaluated by the checkpointed model, rank 0's
    return evaluate(run.eval_model, run.data["val_loader"], run.data["val_set"], run.ctx, run.args, run.log)[0]


def selects(args):
    return True


def main(args):  # train (or with --valid, evaluate): the final evaluation's stats; ConfigError for bad input
    return lifecycle.main(sys.modules[__name__], args, LAUNCHER_PID)


cli_main = partial(run_cli, main, parse_det_args, "train_det.py")  # the exit status and a one-line message

if __name__ == "__main__":
    sys.exit(cli_main())
