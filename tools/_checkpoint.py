"""What the picture tools share: a trained model from a checkpoint, its inputs (images or clips), its nonlocal
blocks, and where their pictures go.

- Checkpoints: of train_val.py (classification), train_seg.py (segmentation: the decode head's block is drawn) or
  train_video.py (video); ours are rebuilt from their stored `model_args`; the reference's (no `model_args`) from
  the model flags, as `train_val.py --valid` does, with the classifier size the checkpoint holds.
- Images: files or validation-set indices. Classification: the dataset's validation transform (docs/classification.md,
  "Data"), or with keep_aspect (attention maps of files) the whole photo, its shorter side resized to the input size.
  Segmentation: the whole image, its shorter side resized to --input-size (default 256), as train_seg.py
  normalizes it.
- Clips (video checkpoints): video files, frame folders or validation-set indices, decoded as the run's
  validation clips (lib.data.video_transforms.EvalClips: the centre clip of clip_len frames every frame_step
  frames, the centred square resized to frame_size, the run's normalization; all from the checkpoint's args).
- Blocks: every nonlocal block of the model by module name, and the dense attention matrix A (B, N, N) (rows =
  queries; N = H W, or T H W for a space-time block) of the stage-based blocks and of criss-cross attention, from
  the block's input captured by a hook.
- Outputs: by default in the checkpoint's run folder; checked before any computation.
"""
import os
import sys

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib.cc import CrissCrossAttention  # noqa: E402
from lib.cgnl import CGNL  # noqa: E402
from lib.data import build_datasets  # noqa: E402
from lib.data.seg_transforms import normalize as seg_normalize  # noqa: E402
from lib.data.transforms import (CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD, SMALL_INPUT_MAX,  # noqa: E402
                                 large_image_transforms, small_image_transforms)
from lib.data.video import build_video_datasets  # noqa: E402
from lib.data.video_reader import read_clip_frames  # noqa: E402
from lib.data.video_transforms import DEFAULT_NORMALIZATION, EvalClips, crop_box, crop_resize  # noqa: E402
from lib.engine.checkpoint import load_checkpoint  # noqa: E402
from lib.engine.cli import OneLineParser, parse_bool, parse_stages  # noqa: E402,F401  (OneLineParser: for the tools)
from lib.engine.tasks import checkpoint_task  # noqa: E402
from lib.errors import ConfigError  # noqa: E402
from lib.stage import NonlocalStage  # noqa: E402
from models import build_model, classifier_size, load_state_dict_checked  # noqa: E402
from models.segmentation import build_segmentor, load_segmentor_state  # noqa: E402

SMALL_DATASETS = ("cifar10", "cifar100", "fake")
SEG_DATASETS = ("cityscapes", "fake")
SEG_INPUT_SIZE = 256  # shorter image side for segmentation models: a 32 x 64 grid (N = 2048) for a 2:1 image
CHECKPOINT_SUFFIXES = (".pth.tar", ".pth", ".pt", ".tar")


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


def add_input_args(parser):
    """Flags for the checkpoint, the images and (for the reference's checkpoints) the model."""
    parser.add_argument("checkpoint", help="a checkpoint of train_val.py (ours or the reference's), of "
                        "train_seg.py (the decode head's block) or of train_video.py")
    parser.add_argument("images", nargs="*", metavar="IMAGE|VIDEO", help="image files (any format PIL reads); "
                        "for a video checkpoint video files (any format OpenCV decodes) or frame folders")
    data = parser.add_argument_group("images (clips) from a dataset instead of files")
    data.add_argument("--indices", type=int, nargs="+", metavar="I", help="validation-set indices of --dataset")
    data.add_argument("--dataset", help="cifar10 | cifar100 | imagenet | imagefolder | fake; cityscapes | fake for "
                      "a segmentation checkpoint; ucf101 | hmdb51 | kinetics | videofolder | fake for a video "
                      "one; sets the preprocessing (default: the one the checkpoint was trained on)")
    data.add_argument("--data_dir", "--data-dir", dest="data_dir", help="dataset root (default: the one the "
                      "checkpoint was trained with, else ./data)")
    data.add_argument("--input-size", "--input_size", dest="input_size", type=int, help="network input side "
                      "(default: the checkpoint's, else the dataset's); for a segmentation checkpoint the shorter "
                      f"image side (default {SEG_INPUT_SIZE}: the N x N matrix grows with its fourth power); for a "
                      "video checkpoint the frame size (default: the run's --frame-size)")
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
    checkpoint = load_checkpoint(args.checkpoint)
    run_args = checkpoint.get("args") or {}
    task = checkpoint_task(checkpoint)
    dataset = args.dataset or run_args.get("dataset") or checkpoint.get("dataset")
    saved = checkpoint.get("model_args")
    clip = None
    if task == "video":
        if not saved:
            raise ConfigError(f"{args.checkpoint} is a video checkpoint without model arguments: the tools read "
                              f"those written by train_video.py")
        model = built_from_state(build_model, saved, checkpoint["state_dict"], load_state_dict_checked)
        if not dataset:
            raise ConfigError(f"{args.checkpoint} does not say which dataset it was trained on: pass --dataset")
        input_size = args.input_size or run_args.get("frame_size") or 112
        clip = dict(clip_len=run_args.get("clip_len") or 16, frame_step=run_args.get("frame_step") or 1,
                    normalization=run_args.get("normalization") or DEFAULT_NORMALIZATION,
                    split=run_args.get("split") or 1, validation=run_args.get("validation") or "holdout")
    elif task == "segmentation":
        if not saved:
            raise ConfigError(f"{args.checkpoint} is a segmentation checkpoint without model arguments: the tools "
                              f"read those written by train_seg.py")
        model = built_from_state(build_segmentor, saved, checkpoint["state_dict"], load_segmentor_state)
        if dataset not in SEG_DATASETS:
            raise ConfigError(f"{args.checkpoint} is a segmentation checkpoint: --dataset must be one of "
                              f"{', '.join(SEG_DATASETS)}, got {dataset!r}")
        input_size = args.input_size or SEG_INPUT_SIZE
    else:
        if saved:
            model = build_model(**saved)
        else:
            if not dataset:
                raise ConfigError(f"{args.checkpoint} stores no model arguments (a reference checkpoint): pass "
                                  f"--dataset and the model flags it was trained with (--backbone, --arch, "
                                  f"--nl-type ...)")
            small = dataset in SMALL_DATASETS
            model = build_model(backbone=args.backbone or ("preresnet" if small else "resnet"),
                                arch=args.arch or (20 if small else 50),
                                num_classes=classifier_size(checkpoint["state_dict"]), nl_type=args.nl_type,
                                nl_nums=args.nl_nums, nl_layer=parse_stages(args.nl_layer),
                                stage_num=args.stage_nums, div=args.div, is_sys=args.is_sys, is_norm=args.is_norm)
        load_state_dict_checked(model, checkpoint["state_dict"])
        if not dataset:
            raise ConfigError(f"{args.checkpoint} does not say which dataset it was trained on: pass --dataset")
        input_size = args.input_size or run_args.get("input_size")
    if args.input_size is not None and args.input_size < 8:
        raise ConfigError(f"--input-size must be at least 8, got {args.input_size}")
    args.data_dir = args.data_dir or run_args.get("data_dir") or "./data"
    model = model.to(torch.device(args.device)).eval()
    return LoadedModel(model, task, dataset, input_size, args.checkpoint, checkpoint, clip)


def built_from_state(builder, kwargs, state_dict, load):
    """builder(**kwargs) with the state_dict's weights, built on the meta device (no time spent initializing
    weights that are overwritten; a ResNet-50 segmentor: ~0.5 s instead of ~3 s), then filled by load()."""
    with torch.device("meta"):
        model = builder(**kwargs)
    if any(name not in state_dict for name, _ in model.named_buffers()):  # a buffer no state_dict restores
        model = builder(**kwargs)
    else:
        model = model.to_empty(device="cpu")
    load(model, state_dict)
    return model


def preprocessing(dataset, input_size):
    """(transform PIL -> normalized tensor, mean, std) of the dataset's validation pipeline (docs/classification.md,
    "Data")."""
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


def whole_image(dataset, input_size):
    """(transform PIL -> normalized tensor, mean, std): the whole image, its shorter side resized to the input
    size (no crop, the aspect ratio kept), normalized as the dataset's validation images."""
    import torchvision.transforms as T
    _, mean, std = preprocessing(dataset, input_size)
    size = input_size or (32 if dataset in SMALL_DATASETS else 224)
    return T.Compose([T.Resize(size), T.ToTensor(), T.Normalize(mean, std)]), mean, std


def read_image(path):
    """The image file as PIL RGB, or a one-line ConfigError."""
    if not os.path.isfile(path):
        raise ConfigError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise ConfigError(f"cannot read image {path}: {error}") from None


def load_images(args, loaded, default_count=None, keep_aspect=False):
    """[(name, image tensor (3, h, w) normalized, display image uint8 BGR (h, w, 3))] for the files or indices.

    Without files and --indices, the first default_count validation images (None: an error asking for images).
    """
    if args.images and args.indices:
        raise ConfigError("give image files or --indices, not both")
    if not args.images and not (args.indices or default_count):
        what = "clips: give video files" if loaded.task == "video" else "images: give image files"
        raise ConfigError(f"no {what} or --indices of the validation set")
    if loaded.task == "video":
        return video_clips(args, loaded, default_count)
    if loaded.task == "segmentation":
        return segmentation_images(args, loaded, default_count)
    dataset, input_size = loaded.dataset, loaded.input_size
    if args.images:
        transform, mean, std = (whole_image if keep_aspect else preprocessing)(dataset, input_size)
        out = []
        for path in args.images:
            tensor = transform(read_image(path))
            out.append((os.path.splitext(os.path.basename(path))[0], tensor, to_display(tensor, mean, std)))
        return out
    indices = args.indices or list(range(default_count))
    _, val_set, _ = build_datasets(dataset, args.data_dir, input_size, download=False)
    stats = (None, None) if dataset == "fake" else preprocessing(dataset, input_size)[1:]
    out = []
    for index in indices:
        check_index(index, len(val_set), dataset)
        tensor = val_set[index][0]
        out.append((f"{dataset}_{index}", tensor, to_display(tensor, *stats)))
    return out


def check_index(index, size, dataset, what="images"):
    if not 0 <= index < size:
        raise ConfigError(f"index {index} out of range: the {dataset} validation set has {size} {what}")


def video_clips(args, loaded, default_count):
    """[(name, clip (3, T, S, S) normalized, display frames uint8 BGR (T, S, S, 3))]: the validation clip of each
    video file / frame folder or validation video (lib.data.video_transforms.EvalClips with the run's options);
    without files and --indices the first default_count validation videos."""
    options = loaded.clip
    transform = EvalClips(options["clip_len"], options["frame_step"], loaded.input_size, None,
                          options["normalization"])
    if args.images:
        for path in args.images:
            if not os.path.exists(path):
                raise ConfigError(f"video file not found: {path}")
        sources = [(os.path.splitext(os.path.basename(os.path.normpath(path)))[0],
                    lambda choose, path=path: read_clip_frames(path, choose)) for path in args.images]
    else:
        _, val_set, _, _ = build_video_datasets(loaded.dataset, args.data_dir, split=options["split"],
                                                clip_len=options["clip_len"], frame_step=options["frame_step"],
                                                frame_size=loaded.input_size, test_clips=1,
                                                normalization=options["normalization"],
                                                validation=options["validation"])
        indices = args.indices or list(range(min(default_count, len(val_set))))
        for index in indices:
            check_index(index, len(val_set), loaded.dataset, "videos")
        sources = [(f"{loaded.dataset}_{index}", lambda choose, index=index: val_set.frames(index, choose))
                   for index in indices]
    out = []
    for name, read in sources:
        frames = read(transform.indices)  # uint8 RGB (T, H, W, 3) of the centre clip
        shown = crop_resize(frames, crop_box(frames.shape[1], frames.shape[2], 1.0, "c"), loaded.input_size)
        out.append((name, transform.pixels(frames), np.ascontiguousarray(shown[..., ::-1])))
    return out


def segmentation_images(args, loaded, default_count):
    """Segmentation inputs: uint8 BGR images, the shorter side resized to the input size, normalized as
    train_seg.py does (ImageNet mean / std on the 0-255 scale); the display is the resized image itself."""
    if args.images:
        named = [(os.path.splitext(os.path.basename(path))[0], np.asarray(read_image(path))[:, :, ::-1])
                 for path in args.images]
    else:
        source = segmentation_val_source(loaded.dataset, args.data_dir)
        indices = args.indices or list(range(min(default_count, len(source))))
        named = []
        for index in indices:
            check_index(index, len(source), loaded.dataset)
            named.append((f"{loaded.dataset}_{index}", source.load(index)[0]))
    out = []
    for name, bgr in named:
        height, width = bgr.shape[:2]
        scale = loaded.input_size / min(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        resized = np.ascontiguousarray(cv2.resize(np.ascontiguousarray(bgr), size, interpolation=cv2.INTER_LINEAR))
        out.append((name, torch.from_numpy(seg_normalize(resized)), resized))
    return out


def segmentation_val_source(dataset, data_dir):
    """The validation images of a segmentation dataset (load(i) -> (BGR image, label))."""
    if dataset == "fake":
        from lib.data.fake_scenes import FakeScenes
        from train_seg import FAKE_SIZES
        return FakeScenes(FAKE_SIZES["val"], "val")
    from lib.data.cityscapes import DOWNLOAD_HINT, CityscapesFiles, cityscapes_root
    root = cityscapes_root(data_dir)
    if not os.path.isdir(root):
        raise ConfigError(f"Cityscapes not found: {root} does not exist; {DOWNLOAD_HINT.format(root=root)}")
    return CityscapesFiles(root, "val")


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


class _AllCaptured(Exception):
    """Raised by the last hook: the rest of the forward pass is not needed."""


def capture_inputs(model, modules, images):
    """{module name: its input (B, C, H, W) or (B, C, T, H, W)} for one forward of images (B, 3, h, w) or clips
    (B, 3, T, h, w), through forward pre-hooks;
    the forward stops once every module has seen its input."""
    captured = {}

    def hook(module, inputs, name):
        captured[name] = inputs[0].detach()
        if len(captured) == len(modules):
            raise _AllCaptured

    handles = [module.register_forward_pre_hook(lambda m, inputs, name=name: hook(m, inputs, name))
               for name, module in modules]
    try:
        with torch.no_grad():
            model(images)
    except _AllCaptured:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return captured


def inputs_per_image(loaded, modules, images):
    """[{module name: input (1, C, ...)}] per image (clip): one batch when the images share a size, else one by one."""
    tensors = [tensor for _, tensor, _ in images]
    if len({tuple(t.shape) for t in tensors}) == 1:
        captured = capture_inputs(loaded.model, modules, torch.stack(tensors).to(loaded.device))
        return [{name: x[k:k + 1] for name, x in captured.items()} for k in range(len(tensors))]
    return [capture_inputs(loaded.model, modules, t[None].to(loaded.device)) for t in tensors]


def checkpoint_stem(path):
    name = os.path.basename(path)
    for suffix in CHECKPOINT_SUFFIXES:
        if name.endswith(suffix):
            return name[:-len(suffix)] or name
    return os.path.splitext(name)[0]


def run_folder(path):
    """The folder holding the checkpoint: its run folder."""
    return os.path.dirname(os.path.abspath(path))


def run_label(path):
    """The run a checkpoint belongs to, for titles: its folder (relative to here where it is below) / file."""
    folder = run_folder(path)
    relative = os.path.relpath(folder)
    shown = relative if not relative.startswith("..") else os.path.join(*folder.split(os.sep)[-4:])
    return f"{shown}/{os.path.basename(path)}"


def check_writable_folder(flag, folder):
    """One line when `folder` cannot be (created and) written, before any computation."""
    probe = os.path.abspath(folder)
    if os.path.exists(probe) and not os.path.isdir(probe):
        raise ConfigError(f"{flag} {folder} is a file, not a folder")
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ConfigError(f"{flag} {folder}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {folder}: {probe} is not writable (pass {flag} somewhere you can write)")


def check_output_file(flag, path, suffixes=None):
    """One line when `path` cannot be written as a file of one of the suffixes, before any computation."""
    if os.path.isdir(path):
        raise ConfigError(f"{flag} {path} is a folder: give a file name inside it")
    if suffixes and os.path.splitext(path)[1].lower() not in suffixes:
        raise ConfigError(f"{flag} {path}: the file name must end in one of {', '.join(suffixes)}")
    check_writable_folder(flag, os.path.dirname(os.path.abspath(path)))


def image_suffixes():
    """The file types matplotlib writes (.png, .pdf, .svg, ...)."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    return tuple(f".{ext}" for ext in Figure().canvas.get_supported_filetypes())


def criss_cross_attention(module, x):
    """A (B, N, N) of one CrissCrossAttention on x (B, C, H, W): row n holds the weights of query n.

    Query (i, j) attends to its column (k, j), k != i, and its row (i, k) with one softmax over the H + W
    energies query . key (docs/blocks.md, "At a glance": cc); everything else in its row of A is 0. So the module's
    output is x + gamma * (value A^T) on the (B, C, N) view.
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
    """A (B, N, N) of a stage-based block or a CrissCrossAttention module for its input x (B, C, H, W), or of a
    space-time stage for x (B, C, T, H, W) (N = T H W, positions in (t, y, x) order)."""
    if isinstance(module, CrissCrossAttention):
        return criss_cross_attention(module, x)
    with torch.no_grad():
        return module.affinity(x).dense()


def parse_error_exit(prog, error):
    """The tools' one-line error: 'prog: error: message' on stderr; returns exit status 2."""
    print(f"{prog}: error: {' '.join(str(error).split())}", file=sys.stderr)
    return 2

