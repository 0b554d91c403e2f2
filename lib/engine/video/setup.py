"""What train_video.py builds from its flags: the run folder, the model's arguments, the fine-tuning parameter
groups, the 5-D memory format, the data and its loaders."""
import os
from argparse import Namespace

import torch
from torch.utils.data import DataLoader

from lib.data.samplers import ContiguousShardSampler
from lib.engine.distributed import local_main_first
from lib.engine.runtime import prepare_model


def run_folder(args):
    """<output-dir>/<dataset>/<backbone><arch>/<checkpoints>: depth 18 names several video backbones."""
    return os.path.join(args.output_dir, args.dataset, f"{args.backbone}{args.arch}", args.checkpoints)


def model_kwargs(args, num_classes, pretrained=None):
    """models.build_model's keyword arguments from the flags (unset block options: the model's defaults)."""
    kwargs = dict(backbone=args.backbone, arch=args.arch, num_classes=num_classes,
                  nl_type=args.nl_type if args.nl_nums else None, nl_nums=args.nl_nums, stage_num=args.stage_nums,
                  div=args.div, is_sys=args.is_sys, is_norm=args.is_norm, order=args.order,
                  pretrained=pretrained or None)
    for name in ("nl_layer", "output_relu"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    return kwargs


def check_model_flags(args, build_model):
    """Fail on a bad model flag before any data is read: building on the meta device costs nothing."""
    with torch.device("meta"):
        build_model(**model_kwargs(args, num_classes=2))


def parameter_groups(model, ft_begin_index):
    """SGD parameter groups: with ft_begin_index K > 0, the layers before layer K train at lr 0 (3D-ResNets'
    fine-tuning). Each group carries lr_scale (0 or 1), which set_lr keeps when the schedule sets the lr."""
    from models.video import fine_tuning_parameters
    groups = fine_tuning_parameters(model, ft_begin_index)
    groups = [dict(group) if isinstance(group, dict) else {"params": [group]} for group in groups]
    for group in groups:
        group["params"] = list(group["params"])
        group["lr_scale"] = 0.0 if group.get("lr") == 0 else 1.0
        group.pop("lr", None)
    return [group for group in groups if group["params"]]


def set_lr(optimizer, lr):
    """The schedule's lr into every group, times the group's lr_scale (frozen layers stay at 0)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def frozen_parameter_count(optimizer):
    return sum(p.numel() for group in optimizer.param_groups if group.get("lr_scale", 1.0) == 0
               for p in group["params"])


def prepare_video_model(model, args, ctx, log):
    """lib.engine.runtime.prepare_model for 5-D inputs: --channels-last means channels_last_3d here."""
    if not args.channels_last:
        return prepare_model(model, args, ctx, log)
    model = model.to(memory_format=torch.channels_last_3d)
    return prepare_model(model, Namespace(**dict(vars(args), channels_last=False)), ctx, log)


def to_device(clips, target, ctx, args):
    clips = clips.to(ctx.device, non_blocking=True)
    if args.channels_last:
        clips = clips.contiguous(memory_format=torch.channels_last_3d)
    return clips, target.to(ctx.device, non_blocking=True)


def build_data(args, ctx):
    """(train_set, val_set, test_set, info) of --dataset; ConfigError, on one line, for missing data."""
    from lib.data.video import build_video_datasets
    options = {"normalization": args.normalization} if args.normalization else {}
    return local_main_first(ctx, lambda: build_video_datasets(
        args.dataset, args.data_dir, split=args.split, clip_len=args.clip_len, frame_step=args.frame_step,
        frame_size=args.frame_size, hflip=args.hflip, test_clips=args.test_clips, **options))


def test_loader_of(test_set, ctx, args):
    """The multi-clip test: each process a contiguous shard of the videos (every video counted once), as many
    videos per batch as make about --batch-size clips."""
    videos_per_batch = max(1, args.batch_size // args.test_clips)
    return DataLoader(test_set, batch_size=videos_per_batch, sampler=ContiguousShardSampler(test_set, ctx.world_size,
                      ctx.rank), num_workers=args.workers, pin_memory=torch.cuda.is_available(),
                      generator=torch.Generator().manual_seed(args.seed))
