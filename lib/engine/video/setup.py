"""What train_video.py builds from its flags: the fine-tuning parameter groups, the 5-D memory format, the data and
its loaders."""
from argparse import Namespace

import torch
from torch.utils.data import DataLoader

from lib.data import loader_options
from lib.data.samplers import ContiguousShardSampler
from lib.engine.distributed import local_main_first
from lib.engine.runtime import prepare_model


def freeze_for_fine_tuning(model, ft_begin_index):
    """3D-ResNets' fine-tuning: with ft_begin_index K > 0 only layer K..4, the fc and the nonlocal blocks train (the
    rest gets requires_grad False; models.video.fine_tuning_parameters). Call before the model is wrapped for DDP,
    which registers the parameters that receive gradients."""
    from models.video import fine_tuning_parameters
    fine_tuning_parameters(model, ft_begin_index)


def trainable_parameters(model):
    """The parameters the optimizer updates (a resumed run selects the same ones, in the same order)."""
    return [param for param in model.parameters() if param.requires_grad]


def frozen_parameter_count(model):
    return sum(param.numel() for param in model.parameters() if not param.requires_grad)


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
    from lib.data.video import MIN_FRAME_SIZE, build_video_datasets
    options = {"normalization": args.normalization} if args.normalization else {}
    if getattr(args, "crop_scales", None):  # else the dataset's default scales (the recipe's)
        options["crop_scales"] = tuple(args.crop_scales)
    return local_main_first(ctx, lambda: build_video_datasets(
        args.dataset, args.data_dir, split=args.split, clip_len=args.clip_len, frame_step=args.frame_step,
        frame_size=args.frame_size, hflip=args.hflip, test_clips=args.test_clips, validation=args.validation,
        train_crop=getattr(args, "train_crop", "corner"), min_frame_size=MIN_FRAME_SIZE, **options))


def test_loader_of(test_set, ctx, args):
    """The multi-clip test: each process a contiguous shard of the videos (every video counted once), as many
    videos per batch as make about --batch-size clips."""
    videos_per_batch = max(1, args.batch_size // args.test_clips)
    return DataLoader(test_set, batch_size=videos_per_batch, sampler=ContiguousShardSampler(test_set, ctx.world_size,
                      ctx.rank), **loader_options(args.workers, ctx.device, args.seed))
