"""Command line of train_reid.py: the re-ID data, model, loss and protocol flags, the epoch schedule flags and the
run flags every entry point has (lib.engine.cli.add_run_flags).

Flags whose default depends on the dataset (the recipe, lib/engine/reid/recipe.py) default to None here, so that a
value given on the command line or in --config is detectable and wins.
"""
from lib.engine.cli import OneLineParser, add_run_flags, add_step_schedule_flags, bool_flag, parse_pretrained
from lib.engine.config import parse_flags
from lib.registry import NONLOCAL_BLOCKS, ORDER_BLOCKS

REID_DATASETS = ("market1501", "dukemtmcreid", "msmt17", "reidfolder", "fake", "mars", "ilidsvid", "prid2011",
                 "fakevideo")


def parse_split(text):
    """--split: an iLIDS-VID / PRID-2011 split 0..9, or 'all' (the ten, each a run of its own)."""
    return "all" if str(text).lower() == "all" else int(text)


def _add_data_flags(parser):
    data = parser.add_argument_group("data (unset = the dataset's recipe, docs/reid.md)")
    data.add_argument("--dataset", default="market1501", help=f"{' | '.join(REID_DATASETS)} (default market1501; "
                      "fake / fakevideo: generated images / tracklets, for a smoke run)")
    data.add_argument("--data-dir", "--data_dir", dest="data_dir", default="./data",
                      help="dataset root, laid out as docs/reid.md says (default ./data)")
    data.add_argument("--img-size", "--img_size", dest="img_size", type=int, nargs=2, default=None,
                      metavar=("H", "W"), help="input height and width (default 256 128; video 224 112; fake 64 32)")
    data.add_argument("--hflip", type=float, default=None, help="horizontal flip probability (default 0.5)")
    data.add_argument("--pad", type=int, default=None, help="zero padding before the random crop (default 10)")
    data.add_argument("--erasing", type=float, default=None, help="random erasing probability (default 0.5)")
    data.add_argument("--seq-len", "--seq_len", dest="seq_len", type=int, default=None,
                      help="video: frames per clip T (default 4; fakevideo 2)")
    data.add_argument("--test-sampling", "--test_sampling", dest="test_sampling", default=None,
                      choices=("dense", "evenly"), help="video test feature of a tracklet: dense (every frame in "
                      "consecutive clips, averaged; default) or evenly (T evenly spaced frames)")
    data.add_argument("--split", type=parse_split, default=0, metavar="0..9|all",
                      help="iLIDS-VID / PRID-2011 split (default 0); all: the ten splits, each a run in "
                      "<run folder>/split<k>, mean and std in splits_summary.json")


def _add_model_flags(parser):
    model = parser.add_argument_group("model (unset = the recipe)")
    model.add_argument("--backbone", dest="trunk", default=None, choices=("resnet", "resnet3d"),
                       help="resnet (default: 2-D ResNet; video frames through it, blocks over the clip's volume) "
                       "or resnet3d (video: the 3-D ResNet of train_video.py)")
    model.add_argument("--arch", default=None, help="ResNet depth 18, 34, 50, 101 (default 50; fake 18)")
    model.add_argument("--last-stride", "--last_stride", dest="last_stride", type=int, default=None,
                       choices=(1, 2), help="stride of layer4 (default 1, BoT)")
    model.add_argument("--pooling", default=None, choices=("avg", "gem"), help="global pooling (default avg)")
    model.add_argument("--temporal", default=None, choices=("avg", "attention"),
                       help="video: temporal pooling over the clip's frames (default avg)")
    model.add_argument("--nl-type", "--nl_type", dest="nl_type", default=None,
                       help=f"nonlocal block: {' | '.join(NONLOCAL_BLOCKS)} | none (default snl)")
    model.add_argument("--nl-nums", "--nl_nums", dest="nl_nums", type=int, default=None, choices=(0, 1, 5),
                       help="blocks: 1 (default; in layer3 before its last block) or 5 (AGW's places)")
    model.add_argument("--stage-nums", "--stage_nums", dest="stage_nums", type=int, default=None,
                       help="units per nonlocal stage (default 1)")
    model.add_argument("--div", type=float, default=None, help="block inner width C' = int(C / div) (default 2)")
    model.add_argument("--order", type=int, default=None, metavar="K",
                       help=f"order of {' and '.join(ORDER_BLOCKS)} (default 2)")
    bool_flag(model, "--is_sys", "--is-sys", default=None, help="symmetric affinity (default: the block's own)")
    bool_flag(model, "--is_norm", "--is-norm", default=None, help="normalized affinity (default: the block's own)")
    bool_flag(model, "--output-relu", "--output_relu", default=None, help="ReLU after each unit of a stage block")
    model.add_argument("--pretrained", type=parse_pretrained, default=None, metavar="BOOL|PATH",
                       help="ImageNet weights of the trunk: True (torchvision's, downloaded; default for the real "
                       "datasets), False (default for fake), or a state_dict file (resnet3d: a 3D-ResNets file)")


def _add_loss_flags(parser):
    loss = parser.add_argument_group("loss and sampler (unset = BoT's, docs/reid.md)")
    loss.add_argument("--triplet", default=None, choices=("hard", "weighted", "none"),
                      help="hard (batch-hard, BoT; default), weighted (AGW's weighted regularized) or none")
    loss.add_argument("--margin", type=float, default=None, help="batch-hard triplet margin (default 0.3)")
    loss.add_argument("--label-smoothing", "--label_smoothing", dest="label_smoothing", type=float, default=None,
                      help="cross-entropy label smoothing (default 0.1)")
    loss.add_argument("--center-loss", "--center_loss", dest="center_loss", type=float, default=None, metavar="W",
                      help="center loss weight (default 0 = off; BoT 5e-4), its centres trained by SGD --center-lr")
    loss.add_argument("--center-lr", "--center_lr", dest="center_lr", type=float, default=None,
                      help="SGD lr of the center loss's centres (default 0.5, BoT)")
    loss.add_argument("--num-instances", "--num_instances", dest="num_instances", type=int, default=None,
                      metavar="K", help="images (tracklets) per identity in a batch: P = batch / K (default 4)")


def _add_protocol_flags(parser):
    protocol = parser.add_argument_group("evaluation protocol")
    protocol.add_argument("--distance", default=None, choices=("euclidean", "cosine"),
                          help="distance between L2-normalized features (default euclidean)")
    bool_flag(protocol, "--rerank", default=None, help="k-reciprocal re-ranking (Zhong et al. 2017; k1 20, k2 6, "
              "lambda 0.3)")
    protocol.add_argument("--save-features", "--save_features", dest="save_features", default="",
                          metavar="X.npz", help="with --valid: write qf, gf, q_pids, g_pids, q_camids, g_camids")


def _add_schedule_flags(parser):
    sched = parser.add_argument_group("schedule (unset = the recipe, docs/reid.md)")
    sched.add_argument("--epochs", type=int, default=None, help="total epochs (default 120; fake 2)")
    sched.add_argument("-b", "--batch-size", "--batch_size", dest="batch_size", type=int, default=None,
                       help="images (video: tracklets) per process and iteration (default 64; video 32; fake 16)")
    sched.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=None,
                       help="Adam learning rate (default 3.5e-4; video 3e-4)")
    add_step_schedule_flags(sched, lr_steps="default 40 70", warmup="default 10",
                            weight_decay="Adam weight decay (default 5e-4)",
                            eval_freq="evaluate every N epochs and after the last (default 10; fake 1)")


def get_args_parser(add_help=True):
    parser = OneLineParser(prog="train_reid.py", add_help=add_help, description="Train / evaluate person "
                           "re-identification (ResNets with nonlocal blocks) on image and video re-ID sets")
    _add_data_flags(parser)
    _add_model_flags(parser)
    _add_loss_flags(parser)
    _add_protocol_flags(parser)
    _add_schedule_flags(parser)
    add_run_flags(parser, print_freq=20, save_recipes="30 for MSMT17 and MARS, off for the others",
                  model_dir="<backbone><arch>")
    parser.set_defaults(isresume=False, resumename="")
    return parser


def parse_reid_args(argv=None):
    """Flags over --config over parser defaults; args.explicit lists the flags given (the recipe fills the rest)."""
    return parse_flags(argv, get_args_parser)
