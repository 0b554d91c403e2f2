"""The inputs of a loaded model (tools/_loaded_model.py): images or clips, from files or validation-set indices.

- Classification: the dataset's validation transform (docs/classification.md, "Data"), or with keep_aspect
  (attention maps of files) the whole photo, its shorter side resized to the input size.
- Segmentation: the whole image, its shorter side resized to the input size, as train_seg.py normalizes it.
- Re-ID: image files resized to the run's (H, W), normalized as its test images; Detection: image files as
  [0, 1] RGB tensors, which the detector's own transform resizes and normalizes.
- Video: video files, frame folders or validation-set indices, decoded as the run's validation clips
  (lib.data.video_transforms.EvalClips: the centre clip of clip_len frames every frame_step frames, the centred
  square resized to frame_size, the run's normalization; all from the checkpoint's args).
"""
import os

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from lib.data import build_datasets
from lib.data.seg_transforms import normalize as seg_normalize
from lib.data.transforms import (
    CIFAR_MEAN,
    CIFAR_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SMALL_INPUT_MAX,
    large_image_transforms,
    small_image_transforms,
)
from lib.data.video import build_video_datasets
from lib.data.video_reader import read_clip_frames
from lib.data.video_transforms import EvalClips, crop_box, crop_resize
from lib.errors import ConfigError

SMALL_DATASETS = ("cifar10", "cifar100", "fake")


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
    if loaded.task in ("reid", "detection"):
        if not args.images:
            raise ConfigError(f"a {loaded.task} checkpoint takes image files, not --indices")
        return (reid_images if loaded.task == "reid" else detection_images)(args.images, loaded)
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


def reid_images(paths, loaded):
    """Re-ID inputs: each file resized to the run's (H, W) and normalized as the test images of train_reid.py
    (lib.data.reid.ReidTransform, test mode); the display is the resized image. A video re-ID model gets the
    image as a clip of one frame, (1, 3, H, W)."""
    from lib.data.reid import ReidTransform
    from lib.data.reid import read_image as read_pixels
    transform = ReidTransform(loaded.input_size)
    out = []
    for path in paths:
        if not os.path.isfile(path):
            raise ConfigError(f"image file not found: {path}")
        resized = transform.resize(read_pixels(path))  # uint8 (3, H, W)
        tensor = transform.after_resize(resized)
        display = np.ascontiguousarray(resized.permute(1, 2, 0).numpy()[:, :, ::-1])
        video = getattr(loaded.model, "video", False)
        out.append((os.path.splitext(os.path.basename(path))[0], tensor[None] if video else tensor, display))
    return out


def detection_images(paths, loaded):
    """Detection inputs: the whole image as float RGB in [0, 1], as the detectors take it (their own transform
    normalizes and resizes); the display is the image itself (BGR)."""
    out = []
    for path in paths:
        rgb = np.asarray(read_image(path))
        tensor = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div_(255)
        out.append((os.path.splitext(os.path.basename(path))[0], tensor, np.ascontiguousarray(rgb[:, :, ::-1])))
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
        from lib.data.fake_scenes import SPLIT_SIZES, FakeScenes
        return FakeScenes(SPLIT_SIZES["val"], "val")
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
