"""What the picture tools share: a trained model from a checkpoint, its input images, and its nonlocal blocks.

- Checkpoints: ours are rebuilt from their stored `model_args`; the reference's (no `model_args`) from the model
  flags, as `train_val.py --valid` does, with the classifier size the checkpoint holds.
- Images: files, preprocessed as the dataset's validation transform (see README "Data"), or validation-set indices.
- Blocks: every nonlocal block of the model by module name, and the dense attention matrix A (B, N, N) (rows =
  queries) of the stage-based blocks and of criss-cross attention, from the block's input captured by a hook.
"""
import os
import sys

import torch
from PIL import Image, UnidentifiedImageError

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib.cc import CrissCrossAttention  # noqa: E402
from lib.cgnl import CGNL  # noqa: E402
from lib.data import build_datasets  # noqa: E402
from lib.data.transforms import (CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD, SMALL_INPUT_MAX,  # noqa: E402
                                 large_image_transforms, small_image_transforms)
from lib.engine.checkpoint import load_checkpoint  # noqa: E402
from lib.engine.cli import OneLineParser, parse_bool, parse_stages  # noqa: E402,F401  (OneLineParser: for the tools)
from lib.errors import ConfigError  # noqa: E402
from lib.stage import NonlocalStage  # noqa: E402
from models import build_model, classifier_size, load_state_dict_checked  # noqa: E402

SMALL_DATASETS = ("cifar10", "cifar100", "fake")


def add_input_args(parser):
    """Flags for the checkpoint, the images and (for the reference's checkpoints) the model."""
    parser.add_argument("checkpoint", help="a checkpoint of train_val.py (ours or the reference's)")
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="image files (any format PIL reads)")
    data = parser.add_argument_group("images from a dataset instead of files")
    data.add_argument("--indices", type=int, nargs="+", metavar="I", help="validation-set indices of --dataset")
    data.add_argument("--dataset", help="cifar10 | cifar100 | imagenet | imagefolder | fake; sets the "
                      "preprocessing (default: the one the checkpoint was trained on)")
    data.add_argument("--data_dir", "--data-dir", dest="data_dir", help="dataset root (default: the one the "
                      "checkpoint was trained with, else ./data)")
    data.add_argument("--input-size", "--input_size", dest="input_size", type=int, help="network input side "
                      "(default: the checkpoint's, else the dataset's)")
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
    """(model in eval mode on args.device, dataset name, input size) from args.checkpoint and the flags."""
    checkpoint = load_checkpoint(args.checkpoint)
    run_args = checkpoint.get("args") or {}
    dataset = args.dataset or run_args.get("dataset")
    saved = checkpoint.get("model_args")
    if saved:
        model = build_model(**saved)
    else:
        if not dataset:
            raise ConfigError(f"{args.checkpoint} stores no model arguments (a reference checkpoint): pass "
                              f"--dataset and the model flags it was trained with (--backbone, --arch, --nl-type ...)")
        small = dataset in SMALL_DATASETS
        model = build_model(backbone=args.backbone or ("preresnet" if small else "resnet"),
                            arch=args.arch or (20 if small else 50),
                            num_classes=classifier_size(checkpoint["state_dict"]), nl_type=args.nl_type,
                            nl_nums=args.nl_nums, nl_layer=parse_stages(args.nl_layer), stage_num=args.stage_nums,
                            div=args.div, is_sys=args.is_sys, is_norm=args.is_norm)
    load_state_dict_checked(model, checkpoint["state_dict"])
    if not dataset:
        raise ConfigError(f"{args.checkpoint} does not say which dataset it was trained on: pass --dataset")
    input_size = args.input_size or run_args.get("input_size")
    args.data_dir = args.data_dir or run_args.get("data_dir") or "./data"
    return model.to(torch.device(args.device)).eval(), dataset, input_size


def preprocessing(dataset, input_size):
    """(transform PIL -> normalized tensor, mean, std) of the dataset's validation pipeline (README "Data")."""
    if dataset in SMALL_DATASETS:
        # fake data has no files; images given to a model trained on it are normalized as ImageNet's
        mean, std = (CIFAR_MEAN, CIFAR_STD) if dataset.startswith("cifar") else (IMAGENET_MEAN, IMAGENET_STD)
        return small_image_transforms(input_size or 32, mean, std, resize=True)[1], mean, std
    if dataset in ("imagenet", "imagefolder"):
        size = input_size or 224
        if dataset == "imagefolder" and size <= SMALL_INPUT_MAX:
            transform = small_image_transforms(size, IMAGENET_MEAN, IMAGENET_STD, resize=True)[1]
            return transform, IMAGENET_MEAN, IMAGENET_STD
        return large_image_transforms(size)[1], IMAGENET_MEAN, IMAGENET_STD
    raise ConfigError(f"unknown dataset {dataset!r}: cifar10, cifar100, imagenet, imagefolder or fake")


def load_images(args, dataset, input_size, default_count=None):
    """[(name, image tensor (3, h, w) normalized, display image uint8 BGR (h, w, 3))] for the files or indices.

    Without files and --indices, the first default_count validation images (None: an error asking for images).
    """
    if args.images and args.indices:
        raise ConfigError("give image files or --indices, not both")
    if args.images:
        transform, mean, std = preprocessing(dataset, input_size)
        out = []
        for path in args.images:
            if not os.path.isfile(path):
                raise ConfigError(f"image file not found: {path}")
            try:
                with Image.open(path) as image:
                    tensor = transform(image.convert("RGB"))
            except (UnidentifiedImageError, OSError) as error:
                raise ConfigError(f"cannot read image {path}: {error}") from None
            out.append((os.path.splitext(os.path.basename(path))[0], tensor, to_display(tensor, mean, std)))
        return out
    indices = args.indices or (list(range(default_count)) if default_count else None)
    if not indices:
        raise ConfigError("no images: give image files or --indices of the validation set")
    _, val_set, _ = build_datasets(dataset, args.data_dir, input_size, download=False)
    stats = (None, None) if dataset == "fake" else preprocessing(dataset, input_size)[1:]
    out = []
    for index in indices:
        if not 0 <= index < len(val_set):
            raise ConfigError(f"index {index} out of range: the {dataset} validation set has {len(val_set)} images")
        tensor = val_set[index][0]
        out.append((f"{dataset}_{index}", tensor, to_display(tensor, *stats)))
    return out


def to_display(tensor, mean=None, std=None):
    """A normalized (3, h, w) tensor back to a uint8 BGR image; without mean/std (fake data) scaled to its range."""
    x = tensor.detach().float().cpu()
    if mean is not None:
        x = x * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    else:
        x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-12)
    rgb = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return rgb[:, :, ::-1].copy()


def nonlocal_blocks(model):
    """[(module name, module)] of every nonlocal block: stage-based blocks, criss-cross modules (one per CC unit),
    CGNL blocks, in model order."""
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, (NonlocalStage, CrissCrossAttention, CGNL))]


def block_kind(module):
    return "cgnl" if isinstance(module, CGNL) else "cc" if isinstance(module, CrissCrossAttention) else "stage"


def capture_inputs(model, modules, images):
    """{module name: its input (B, C, H, W)} for one forward of images (B, 3, h, w), through forward pre-hooks."""
    captured = {}
    handles = [module.register_forward_pre_hook(lambda m, inputs, name=name: captured.__setitem__(
        name, inputs[0].detach())) for name, module in modules]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def criss_cross_attention(module, x):
    """A (B, N, N) of one CrissCrossAttention on x (B, C, H, W): row n holds the weights of query n.

    Query (i, j) attends to its column (k, j), k != i, and its row (i, k) with one softmax over the H + W
    energies query . key (README, block table: cc); everything else in its row of A is 0. So the module's output
    is x + gamma * (value A^T) on the (B, C, N) view.
    """
    with torch.no_grad():
        q, k = module.query_conv(x), module.key_conv(x)  # (B, C', H, W)
        b, _, h, w = q.shape
        energy_col = torch.einsum("bchw,bckw->bhwk", q, k)  # query (i, j) vs key (k, j)
        self_in_col = torch.eye(h, dtype=torch.bool, device=x.device)[:, None, :]  # (H, 1, H)
        energy_col = energy_col.masked_fill(self_in_col, float("-inf"))
        energy_row = torch.einsum("bchw,bchk->bhwk", q, k)  # query (i, j) vs key (i, k)
        att = torch.softmax(torch.cat([energy_col, energy_row], dim=-1), dim=-1)  # (B, H, W, H + W)
        eye_h, eye_w = (torch.eye(n, dtype=att.dtype, device=x.device) for n in (h, w))
        dense = torch.einsum("bijk,jl->bijkl", att[..., :h], eye_w)  # A[(i, j), (k, j)]
        dense = dense + torch.einsum("bijk,im->bijmk", att[..., h:], eye_h)  # A[(i, j), (i, k)]
    return dense.reshape(b, h * w, h * w)


def attention_matrix(module, x):
    """A (B, N, N) of a stage-based block or a CrissCrossAttention module for its input x (B, C, H, W)."""
    if isinstance(module, CrissCrossAttention):
        return criss_cross_attention(module, x)
    with torch.no_grad():
        return module.affinity(x).dense()


def parse_error_exit(prog, error):
    """The tools' one-line error: 'prog: error: message' on stderr; returns exit status 2."""
    print(f"{prog}: error: {' '.join(str(error).split())}", file=sys.stderr)
    return 2

