"""A trained model from a checkpoint of any entry point, for the picture tools, with the flags that choose it.

Ours are rebuilt from their stored `model_args` (models.checkpoints.rebuild_model); the reference's (no
`model_args`) from the model flags, as `train_val.py --valid` does, with the classifier size the checkpoint holds.
The dataset, input size and (video) clip options default to the run's.
"""
import argparse

import torch

from lib.data.video_transforms import DEFAULT_NORMALIZATION
from lib.engine.checkpoint import load_checkpoint
from lib.engine.cli import OneLineParser, parse_bool, parse_stages
from lib.errors import ConfigError
from models.checkpoints import rebuild_model
from models.tasks import checkpoint_task
from tools._inputs import SMALL_DATASETS

SEG_DATASETS = ("cityscapes", "fake")
REID_SIZE = (256, 128)  # the re-ID recipe's input (H, W), for a checkpoint whose args do not say
SEG_INPUT_SIZE = 256  # shorter image side for segmentation models: a 32 x 64 grid (N = 2048) for a 2:1 image


class LoadedModel:
    """A model from a checkpoint, in eval mode, with what the tools need to feed and describe it."""

    def __init__(self, model, task, dataset, input_size, path, checkpoint, clip=None):
        self.model, self.task, self.dataset, self.input_size, self.path = model, task, dataset, input_size, path
        self.clip = clip  # video: the run's clip_len, frame_step, normalization, split and validation set
        progress = ("iteration", checkpoint.get("iteration")) if task == "segmentation" else \
            ("epoch", checkpoint.get("epoch"))
        self.progress = f"{progress[0]} {progress[1]}" if progress[1] is not None else None

    @property
    def device(self):
        return next(self.model.parameters()).device


def checkpoint_tool_parser(description):
    """The parser of a tool that reads a checkpoint and its inputs: add_input_args' flags, one-line errors."""
    parser = OneLineParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_args(parser)
    return parser


def add_input_args(parser):
    """Flags for the checkpoint, the images and (for the reference's checkpoints) the model."""
    parser.add_argument("checkpoint", help="a checkpoint of train_val.py (ours or the reference's), of "
                        "train_seg.py (the decode head's block), train_video.py, train_reid.py or train_det.py")
    parser.add_argument("images", nargs="*", metavar="IMAGE|VIDEO", help="image files (any format PIL reads); "
                        "for a video checkpoint video files (any format OpenCV decodes) or frame folders")
    data = parser.add_argument_group("images (clips) from a dataset instead of files")
    data.add_argument("--indices", type=int, nargs="+", metavar="I", help="validation-set indices of --dataset")
    data.add_argument("--dataset", help="cifar10 | cifar100 | imagenet | imagefolder | fake; cityscapes | fake for "
                      "a segmentation checkpoint; ucf101 | hmdb51 | kinetics | videofolder | fake for a video "
                      "one (re-ID and detection checkpoints: image files only); sets the preprocessing "
                      "(default: the one the checkpoint was trained on)")
    data.add_argument("--data_dir", "--data-dir", dest="data_dir", help="dataset root (default: the one the "
                      "checkpoint was trained with, else ./data)")
    data.add_argument("--input-size", "--input_size", dest="input_size", type=int, help="network input side "
                      "(default: the checkpoint's, else the dataset's); for a segmentation checkpoint the shorter "
                      f"image side (default {SEG_INPUT_SIZE}: the N x N matrix grows with its fourth power); for a "
                      "video checkpoint the frame size (default: the run's --frame-size); for a re-ID one the height "
                      "(default: the run's --img-size, the width keeps its aspect ratio); for a detection one "
                      "the shorter side the detector resizes to (default: its min_size)")
    model = parser.add_argument_group("model flags, only for the reference's checkpoints (ours store their model)")
    model.add_argument("--backbone", help="preresnet | resnet (default preresnet for CIFAR-size data, else resnet)")
    model.add_argument("--arch", help="preresnet 20, 56, 110; resnet 50, 101, 152 (default 20 / 50)")
    model.add_argument("--nl-type", "--nl_type", dest="nl_type", default="snl", help="block type (default snl)")
    model.add_argument("--nl-nums", "--nl_nums", dest="nl_nums", type=int, default=1, help="number of blocks")
    model.add_argument("--nl_layer", "--nl-layer", dest="nl_layer", nargs="+", default=["1"], metavar="STAGE",
                       help="preresnet stage(s) holding a block (default 1)")
    model.add_argument("--stage-nums", "--stage_nums", dest="stage_nums", type=int, default=1)
    model.add_argument("--div", type=float, default=2)
    for flag in ("--is_sys", "--is_norm"):
        model.add_argument(flag, nargs="?", const=True, default=None, type=parse_bool, metavar="BOOL",
                           help="affinity switch, as for train_val.py (the reference built every PreResNet block "
                           "with both on: pass both for its checkpoints)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")


def load_model(args):
    """LoadedModel from args.checkpoint and the flags (args.data_dir is filled in from the checkpoint)."""
    if args.input_size is not None and args.input_size < 8:
        raise ConfigError(f"--input-size must be at least 8, got {args.input_size}")
    checkpoint = load_checkpoint(args.checkpoint)
    run_args = checkpoint.get("args") or {}
    task = checkpoint_task(checkpoint)
    dataset = args.dataset or run_args.get("dataset") or checkpoint.get("dataset")
    if task == "classification" and not checkpoint.get("model_args") and not dataset:
        raise ConfigError(f"{args.checkpoint} stores no model arguments (a reference checkpoint): pass --dataset "
                          f"and the model flags it was trained with (--backbone, --arch, --nl-type ...)")
    # The model flags describe a classification model: only the reference's checkpoints are built from them.
    model = rebuild_model(checkpoint, reference_kwargs(args, dataset) if task == "classification" else None,
                          source=args.checkpoint)
    if not dataset:
        raise ConfigError(f"{args.checkpoint} does not say which dataset it was trained on: pass --dataset")
    clip = None
    if task == "video":
        input_size = args.input_size or run_args.get("frame_size") or 112
        clip = dict(clip_len=run_args.get("clip_len") or 16, frame_step=run_args.get("frame_step") or 1,
                    normalization=run_args.get("normalization") or DEFAULT_NORMALIZATION,
                    split=run_args.get("split") or 1, validation=run_args.get("validation") or "holdout")
    elif task == "reid":
        # the run's --img-size (H, W); --input-size sets H, W following the run's aspect ratio
        height, width = run_args.get("img_size") or REID_SIZE
        input_size = (args.input_size, max(8, round(args.input_size * width / height))) if args.input_size \
            else (int(height), int(width))
    elif task == "detection":
        # the detector's own transform resizes (min_size / max_size of its model_args); --input-size overrides
        # the shorter side it aims for
        input_size = args.input_size
        if input_size:
            model.transform.min_size = (input_size,)
    elif task == "segmentation":
        if dataset not in SEG_DATASETS:
            raise ConfigError(f"{args.checkpoint} is a segmentation checkpoint: --dataset must be one of "
                              f"{', '.join(SEG_DATASETS)}, got {dataset!r}")
        input_size = args.input_size or SEG_INPUT_SIZE
    else:
        input_size = args.input_size or run_args.get("input_size")
    args.data_dir = args.data_dir or run_args.get("data_dir") or "./data"
    model = model.to(torch.device(args.device)).eval()
    return LoadedModel(model, task, dataset, input_size, args.checkpoint, checkpoint, clip)


def reference_kwargs(args, dataset):
    """build_model's keywords from the model flags (num_classes: the checkpoint's classifier size)."""
    small = dataset in SMALL_DATASETS
    return dict(backbone=args.backbone or ("preresnet" if small else "resnet"), arch=args.arch or (20 if small else 50),
                nl_type=args.nl_type, nl_nums=args.nl_nums, nl_layer=parse_stages(args.nl_layer),
                stage_num=args.stage_nums, div=args.div, is_sys=args.is_sys, is_norm=args.is_norm)
