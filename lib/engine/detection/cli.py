"""Command line of train_det.py: the detector, the COCO-format data, torchvision's detection schedule, and the
flags every entry point shares (lib.engine.cli.add_run_flags).

Flags whose default depends on the dataset or on --pretrained (lib/engine/detection/recipe.py) default to None
here, so that a value given on the command line or in --config is detectable and wins over the recipe.
"""
from lib.engine.cli import OneLineParser, add_run_flags, add_step_schedule_flags, bool_flag, parse_pretrained
from lib.engine.config import parse_flags
from lib.registry import NONLOCAL_BLOCKS, ORDER_BLOCKS

DET_DATASETS = ("coco", "cocoformat", "fake")
DET_MODELS = ("maskrcnn", "fasterrcnn")
SCHEDULES = ("26ep", "1x")


def _add_data_flags(parser):
    data = parser.add_argument_group("data (docs/detection.md, \"Data\")")
    data.add_argument("--dataset", default="coco", help=f"{' | '.join(DET_DATASETS)} (default coco; fake = a "
                      "tiny generated set written under --data-dir, for a smoke run)")
    data.add_argument("--data-dir", "--data_dir", dest="data_dir", default=None,
                      help="coco: DIR/train2017, DIR/val2017, DIR/annotations (default ./data/coco); fake: where its "
                      "generated images are written (default ./data/fake_det)")
    for split in ("train", "val"):
        data.add_argument(f"--{split}-ann", f"--{split}_ann", dest=f"{split}_ann", default=None, metavar="JSON",
                          help=f"cocoformat: the {split} annotation file")
        data.add_argument(f"--{split}-images", f"--{split}_images", dest=f"{split}_images", default=None,
                          metavar="DIR", help=f"cocoformat: the {split} image folder")
    data.add_argument("--hflip", type=float, default=None, metavar="P",
                      help="horizontal flip probability in training (default 0.5; 0 = off)")
    data.add_argument("--aspect-ratio-group-factor", "--aspect_ratio_group_factor", dest="aspect_ratio_group_factor",
                      type=int, default=None, metavar="K", help="batch images of similar width / height: 2K + 2 "
                      "ratio bins (default 3, torchvision's; 0 = off)")
    bool_flag(data, "--labels-as-ids", "--labels_as_ids", default=None, help="labels are the category ids "
              "themselves (91 classes for COCO), as torchvision's COCO heads were trained (default: True with "
              "--dataset coco --pretrained True, else labels 1..K)")


def _add_model_flags(parser):
    model = parser.add_argument_group("model (docs/detection.md, \"Models\")")
    model.add_argument("--model", default="maskrcnn", choices=DET_MODELS, help="detector (default maskrcnn)")
    model.add_argument("--backbone", default="resnet", choices=("resnet",), help="its FPN backbone (resnet)")
    model.add_argument("--arch", default=None, help="ResNet depth 18 | 34 | 50 | 101 (default 50; fake 18)")
    model.add_argument("--nl-type", "--nl_type", dest="nl_type", default="snl",
                       help=f"{' | '.join(NONLOCAL_BLOCKS)} | none (default snl)")
    model.add_argument("--nl-nums", "--nl_nums", dest="nl_nums", type=int, default=1,
                       help="0, 1 (layer3 before its last residual block, default) or 5")
    model.add_argument("--stage-nums", "--stage_nums", dest="stage_nums", type=int, default=1,
                       help="units per nonlocal stage (default 1)")
    model.add_argument("--div", type=float, default=2, help="channel reduction C' = int(C / div) (default 2)")
    model.add_argument("--order", type=int, default=None, metavar="K",
                       help=f"order of {' and '.join(ORDER_BLOCKS)} (default 2; docs/spectral.md)")
    bool_flag(model, "--is_sys", "--is-sys", default=None, help="symmetric affinity (default: the block's own)")
    bool_flag(model, "--is_norm", "--is-norm", default=None, help="normalized affinity (default: the block's own)")
    bool_flag(model, "--output-relu", "--output_relu", default=None, help="ReLU after each unit of a stage block "
              "(default False: the blocks start as the identity; docs/blocks.md)")
    model.add_argument("--pretrained", type=parse_pretrained, default=False, metavar="BOOL|PATH",
                       help="False (default); True: torchvision's COCO detector (ResNet-50, downloaded); PATH: a "
                       "torchvision-format detector state_dict")
    bool_flag(model, "--pretrained-backbone", "--pretrained_backbone", default=False,
              help="torchvision's ImageNet ResNet weights for the backbone only (default False)")
    model.add_argument("--trainable-backbone-layers", "--trainable_backbone_layers", dest="trainable_backbone_layers",
                       type=int, default=None, metavar="N", help="ResNet stages trained, from layer4 down, 0..5 "
                       "(default 3 with pretrained weights, else 5; torchvision's)")
    bool_flag(model, "--frozen-bn", "--frozen_bn", default=None, help="FrozenBatchNorm2d in the ResNet (default: "
              "exactly when pretrained weights bring statistics, torchvision's rule)")
    model.add_argument("--min-size", "--min_size", dest="min_size", type=int, default=None,
                       help="shorter image side after resizing (default 800; fake 64)")
    model.add_argument("--max-size", "--max_size", dest="max_size", type=int, default=None,
                       help="longest image side after resizing (default 1333; fake 96)")


def _add_schedule_flags(parser):
    sched = parser.add_argument_group("schedule (unset = torchvision's detection reference, docs/detection.md)")
    sched.add_argument("--schedule", default=None, choices=SCHEDULES, help="26ep: 26 epochs, lr x 0.1 at 16 and "
                       "22 (torchvision's; default); 1x: 12 epochs, at 8 and 11 (Detectron2 / mmdetection)")
    sched.add_argument("--epochs", type=int, default=None, help="total epochs (default: by --schedule; fake 2)")
    sched.add_argument("-b", "--batch-size", "--batch_size", dest="batch_size", type=int, default=None,
                       help="images per process and iteration (default 2; the recipe's global batch is 16)")
    sched.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=None,
                       help="base learning rate for 16 images (default 0.02); see --lr-scale")
    add_step_schedule_flags(sched, lr_steps="default: by --schedule", warmup="default 0: the warm-up is by "
                            "iterations, --warmup-iters",
                            weight_decay="SGD weight decay (default 1e-4)",
                            eval_freq="COCO evaluation every N epochs and after the last (default 1)")
    sched.add_argument("--warmup-iters", "--warmup_iters", dest="warmup_iters", type=int, default=None,
                       help="linear warm-up over the first N iterations (default 1000; fake 2; 0 = none)")
    sched.add_argument("--warmup-factor", "--warmup_factor", dest="warmup_factor", type=float, default=None,
                       help="the warm-up starts at lr x this (default 0.001)")
    sched.add_argument("--momentum", type=float, default=None, help="SGD momentum (default 0.9)")
    sched.add_argument("--save-predictions", "--save_predictions", dest="save_predictions", default=None,
                       metavar="X.json", help="with --valid: also write the COCO-format results (the dataset's own "
                       "category ids) to this file")


def get_args_parser(add_help=True):
    parser = OneLineParser(prog="train_det.py", add_help=add_help, description="Train / evaluate Mask R-CNN and "
                           "Faster R-CNN with nonlocal blocks in their ResNet-FPN backbone on COCO-format data")
    _add_data_flags(parser)
    _add_model_flags(parser)
    _add_schedule_flags(parser)
    add_run_flags(parser, print_freq=20, save_recipes="30 for coco and cocoformat, off for fake",
                  model_dir="<model><arch>")
    return parser


def parse_det_args(argv=None):
    """Flags over --config over parser defaults; args.explicit lists the flags given (the recipe fills the rest)."""
    return parse_flags(argv, get_args_parser)
