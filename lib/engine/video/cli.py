"""Command line of train_video.py: train_val.py's flags where they mean the same thing, plus the clip flags.

Flags whose default depends on the dataset (the recipe, lib/engine/video/recipe.py) default to None here, so that a
value given on the command line or in --config is detectable and wins. No flag uses argparse's bool type.
"""
from lib.data.video_transforms import TRAIN_CROPS
from lib.engine.cli import OneLineParser, add_run_flags, add_step_schedule_flags, bool_flag, parse_pretrained
from lib.engine.config import parse_flags
from lib.registry import NONLOCAL_BLOCKS, ORDER_BLOCKS
from models.video import VIDEO_BACKBONES

VIDEO_DATASETS = ("ucf101", "hmdb51", "kinetics", "videofolder", "fake")
VALIDATIONS = ("holdout", "test")


def _add_data_flags(parser):
    data = parser.add_argument_group("data and clips (unset = the dataset's recipe, docs/video.md)")
    data.add_argument("--dataset", default="ucf101", help=f"{' | '.join(VIDEO_DATASETS)} (default ucf101; fake = "
                      "generated clips in memory, for a smoke run)")
    data.add_argument("--data_dir", "--data-dir", dest="data_dir", default="./data",
                      help="dataset root, laid out as docs/video_data.md says (default ./data)")
    data.add_argument("--split", type=int, default=1, choices=(1, 2, 3),
                      help="official train/test split of ucf101 and hmdb51 (default 1)")
    data.add_argument("--validation", default="holdout", choices=VALIDATIONS,
                      help="the per-epoch validation set: holdout (default: videos outside the test split, taken "
                      "from the training data; docs/video.md) or test (the 3D-ResNets convention: the test split; "
                      "then nothing is selected on it: no model_best and no best accuracy, only the final)")
    data.add_argument("--clip-len", "--clip_len", dest="clip_len", type=int, default=None,
                      help="frames per clip (default 16; fake 4)")
    data.add_argument("--frame-step", "--frame_step", dest="frame_step", type=int, default=None,
                      help="take every N-th frame of the video (default 1)")
    data.add_argument("--frame-size", "--frame_size", dest="frame_size", type=int, default=None,
                      help="side of the square crop fed to the network (default 112; fake 32)")
    data.add_argument("--test-clips", "--test_clips", dest="test_clips", type=int, default=None,
                      help="evenly spaced clips per video in the test, softmax scores averaged (default 10)")
    data.add_argument("--normalization", default=None, choices=("kinetics", "activitynet"),
                      help="pixel normalization: kinetics ((x - mean) / std, Kinetics statistics; default) or "
                      "activitynet (x - mean on 0-255 pixels: the input of the 2017 3D-ResNets Kinetics checkpoints "
                      "such as resnet-50-kinetics.pth)")
    data.add_argument("--train-crop", "--train_crop", dest="train_crop", default="corner", choices=TRAIN_CROPS,
                      help="where a training clip's square crop lies: corner (default, the 3D-ResNets recipe: the "
                      "centre or one of the four corners), center, or random; small corner crops can cut a small "
                      "subject out of the clip (docs/video_data.md)")
    data.add_argument("--crop-scales", "--crop_scales", dest="crop_scales", type=float, nargs="+", default=None,
                      metavar="S", help="sides of the training crop as fractions of the frame's short side, one "
                      "drawn per clip (default 1 0.841 0.707 0.595 0.5)")
    data.add_argument("--hflip", type=float, default=None, metavar="P",
                      help="probability of a horizontal flip of a training clip (default 0.5). A mirror swaps "
                      "left and right motion: 0 for classes defined by a direction")


def _add_model_flags(parser):
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", default=None, help=f"{' | '.join(VIDEO_BACKBONES)} (default resnet3d)")
    model.add_argument("--arch", default=None, help="depth: resnet3d 18, 34, 50, 101; r3d, mc3, r2plus1d 18 "
                       "(default 50; fake 18)")
    model.add_argument("--nl-type", "--nl_type", dest="nl_type", default=None,
                       help=f"{' | '.join(NONLOCAL_BLOCKS)} | none (default snl; cc has no 3-D form)")
    model.add_argument("--nl-nums", "--nl_nums", dest="nl_nums", type=int, default=None,
                       help="number of nonlocal blocks: 0, 1 (layer3, before its last block) or 5 (resnet3d 50 / "
                       "101: 3 in layer3, 2 in layer4) (default 1)")
    model.add_argument("--nl_layer", "--nl-layer", dest="nl_layer", nargs="+", default=None, metavar="STAGE",
                       help="with --nl-nums 1: the stage whose block it is, 3 (default) or 2 (after layer2's "
                       "first block)")
    model.add_argument("--stage-nums", "--stage_nums", dest="stage_nums", type=int, default=None,
                       help="units per nonlocal stage (default 1)")
    model.add_argument("--div", type=float, default=None, help="channel reduction C' = int(C / div) (default 2)")
    model.add_argument("--order", type=int, default=None, metavar="K",
                       help=f"order of {' and '.join(ORDER_BLOCKS)} (default 2; docs/spectral.md)")
    bool_flag(model, "--is_sys", "--is-sys", default=None, help="symmetric affinity (switch; default: the block's "
               "own)")
    bool_flag(model, "--is_norm", "--is-norm", default=None, help="normalized ReLU affinity (switch; default: the "
               "block's own)")
    bool_flag(model, "--output-relu", "--output_relu", default=None, help="ReLU after each unit of a stage block "
               "(default False in video models, the earlier release's space-time units X + BN(...); docs/blocks.md)")
    model.add_argument("--shortcut-type", "--shortcut_type", dest="shortcut_type", default=None, choices=("A", "B"),
                       help="resnet3d's shortcut: B (1x1x1 conv + BN; default) or A (zero channels; the 3D-ResNets "
                       "resnet-18/34-kinetics.pth)")
    model.add_argument("--pretrained", type=parse_pretrained, default=False, metavar="BOOL|PATH",
                       help="False (default); a 3D-ResNets checkpoint (resnet3d, e.g. resnet-50-kinetics.pth) or a "
                       "torchvision-format state_dict file; True: torchvision's Kinetics-400 weights (r3d, mc3, "
                       "r2plus1d; downloaded)")
    model.add_argument("--ft-begin-index", "--ft_begin_index", dest="ft_begin_index", type=int, default=None,
                       metavar="K", help="fine-tune only layer K..4, the fc and every nonlocal block (lr 0 for "
                       "the rest; 0 = everything, 5 = the fc and the blocks). Default 4 with --pretrained, else 0")


def _add_schedule_flags(parser):
    sched = parser.add_argument_group("schedule (unset = the dataset's recipe, docs/video.md)")
    sched.add_argument("--epochs", type=int, default=None, help="total epochs (default 200; fake 2)")
    sched.add_argument("-b", "--batch-size", "--batch_size", dest="batch_size", type=int, default=None,
                       help="clips per process and iteration (default 128; fake 4)")
    sched.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=None,
                       help="base learning rate (default 0.1)")
    add_step_schedule_flags(sched, lr_steps="default 50 100 150", warmup="default 0",
                            weight_decay="SGD weight decay (default 1e-3)",
                            eval_freq="centre-clip validation every N epochs and at the last one (default 1)")
    sched.add_argument("--momentum", type=float, default=None, help="SGD momentum (default 0.9)")
    sched.add_argument("--dampening", type=float, default=None, help="SGD dampening (default 0.9)")


def get_args_parser(add_help=True):
    parser = OneLineParser(prog="train_video.py", add_help=add_help, description="Train / evaluate action "
                           "recognition (3-D ResNets with space-time nonlocal blocks) on UCF-101, HMDB-51, Kinetics")
    _add_data_flags(parser)
    _add_model_flags(parser)
    _add_schedule_flags(parser)
    add_run_flags(parser, print_freq=20, save_recipes="30 for Kinetics and videofolder, off for UCF-101, HMDB-51 "
                  "and fake", model_dir="<backbone><arch>")
    # train_val.py's --isresume spelling, which train_video.py does not have (kept in args.yaml as before).
    parser.set_defaults(isresume=False, resumename="")
    return parser


def parse_video_args(argv=None):
    """Flags over --config over parser defaults; args.explicit lists the flags given (the recipe fills the rest
    in resolve_video_args, called by main)."""
    return parse_flags(argv, get_args_parser)
