"""Image files on disk: the reference's "path,label" list files and the ImageFolder layout.

Builders for 'imagenet' (either layout, picked automatically) and 'imagefolder' (any class-per-folder data).
"""
import os

from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import default_loader

from lib.data.info import DatasetInfo
from lib.data.transforms import (
    DEFAULT_HFLIP,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SMALL_INPUT_MAX,
    large_image_transforms,
    small_image_transforms,
)
from lib.errors import ConfigError

IMAGENET_LISTS = ("imagenet_train.list", "imagenet_val.list")
# The reference's ImageNet training crop: scale up to 1.25 of the image area (docs/classification.md, "Data").
IMAGENET_CROP_SCALE = (0.08, 1.25)


def load_image(path):
    """The image at path as RGB; an unreadable file (empty, truncated, not an image) is a one-line ConfigError
    naming it (also when raised in a DataLoader worker: see lib.errors)."""
    try:
        return default_loader(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ConfigError(f"cannot read image {path}: {reason} (replace or remove the file)") from None


def read_list_file(list_file):
    """[(relative path, label)] from a list file: one "path,label" per line, as the reference's ImgLoader reads.

    Tolerated beyond the reference: blank lines, spaces around either field, CRLF endings, commas inside the
    path (the label is after the last comma) and "path label" lines without a comma.
    """
    samples = []
    with open(list_file, "r", encoding="utf-8") as f:
        for line_no, raw in enumerate(f, 1):
            line = raw.strip()
            if not line:
                continue
            fields = line.rsplit(",", 1) if "," in line else line.rsplit(None, 1)
            path, label = (field.strip() for field in fields) if len(fields) == 2 else ("", "")
            try:
                label = int(label)
            except ValueError:
                label = -1
            if not path or label < 0:
                raise ConfigError(f"{list_file}:{line_no}: expected 'path,label' with an integer label >= 0, "
                                  f"got {line!r}")
            samples.append((path, label))
    if not samples:
        raise ConfigError(f"{list_file} lists no images")
    return samples


class ListFileDataset(Dataset):
    """Images named in a list file, paths relative to `root` (the reference's ImgLoader, loaded with PIL as RGB)."""

    def __init__(self, root, list_file, transform=None):
        self.root = root
        self.transform = transform
        self.samples = read_list_file(list_file)
        self.targets = [label for _, label in self.samples]
        first = os.path.join(root, self.samples[0][0])
        # Checking one file catches a wrong root early without stat-ing a million images.
        if not os.path.isfile(first):
            raise ConfigError(f"{list_file} names {self.samples[0][0]}, but {first} does not exist: "
                              f"paths in the list are relative to {root}")

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        image = load_image(os.path.join(self.root, path))
        if self.transform is not None:
            image = self.transform(image)
        return image, label


class _FolderWithClasses(ImageFolder):
    """ImageFolder that uses a given class -> index map (the training split's), so indices agree across splits."""

    def __init__(self, root, class_to_idx, transform=None):
        self._given_class_to_idx = class_to_idx
        super().__init__(root, transform=transform, loader=load_image, allow_empty=True)

    def find_classes(self, directory):
        return sorted(self._given_class_to_idx, key=self._given_class_to_idx.get), self._given_class_to_idx


def image_folder_pair(root, train_tf, val_tf):
    """(train, val) ImageFolder datasets from root/train/<class>/* and root/val/<class>/*; val uses train's classes."""
    try:
        train = ImageFolder(os.path.join(root, "train"), transform=train_tf, loader=load_image)
    except FileNotFoundError as e:
        raise ConfigError(f"{os.path.join(root, 'train')}: {e}") from e
    val_dir = os.path.join(root, "val")
    val_classes = {entry.name for entry in os.scandir(val_dir) if entry.is_dir()}
    unknown = sorted(val_classes - set(train.class_to_idx))
    if unknown:
        raise ConfigError(f"{val_dir} has classes not in train/: {', '.join(unknown[:5])}")
    val = _FolderWithClasses(val_dir, train.class_to_idx, transform=val_tf)
    if len(val) == 0:
        raise ConfigError(f"{val_dir} holds no images in class folders")
    return train, val


def _has_split_dirs(root):
    return os.path.isdir(os.path.join(root, "train")) and os.path.isdir(os.path.join(root, "val"))


def build_imagenet(name, data_dir, input_size=None, download=True, hflip=DEFAULT_HFLIP):
    """(train, val, info) for ImageNet: the reference's list files under <data_dir>/imagenet if present, else the
    ImageFolder layout in <data_dir>/imagenet or <data_dir>. Nothing is downloaded."""
    size = input_size or 224
    train_tf, val_tf = large_image_transforms(size, scale=IMAGENET_CROP_SCALE, hflip=hflip)
    list_root = os.path.join(data_dir, "imagenet")
    lists = [os.path.join(list_root, name_) for name_ in IMAGENET_LISTS]
    if any(os.path.isfile(path) for path in lists):
        missing = [path for path in lists if not os.path.isfile(path)]
        if missing:
            raise ConfigError(f"ImageNet list file {missing[0]} is missing (its partner exists)")
        train = ListFileDataset(list_root, lists[0], transform=train_tf)
        val = ListFileDataset(list_root, lists[1], transform=val_tf)
        num_classes = max(train.targets + val.targets) + 1
    else:
        roots = [root for root in (list_root, os.fspath(data_dir)) if _has_split_dirs(root)]
        if not roots:
            raise ConfigError(
                f"ImageNet not found under {data_dir or '.'}: expected either list files {list_root}/"
                f"{{{','.join(IMAGENET_LISTS)}}} (lines 'path,label', paths relative to {list_root}) or folders "
                f"{list_root}/(train|val)/<class>/*.JPEG (also accepted directly under the data dir)")
        train, val = image_folder_pair(roots[0], train_tf, val_tf)
        num_classes = len(train.classes)
    return train, val, DatasetInfo(name, num_classes, size, small_input=False)


def build_imagefolder(name, data_dir, input_size=None, download=True, hflip=DEFAULT_HFLIP):
    """(train, val, info) for <data_dir>/(train|val)/<class>/*; input_size <= 64 picks the CIFAR-style pipeline."""
    if not _has_split_dirs(data_dir):
        raise ConfigError(f"imagefolder data not found: expected folders {os.path.join(data_dir, 'train')}"
                          f"/<class>/* and {os.path.join(data_dir, 'val')}/<class>/*")
    size = input_size or 224
    small = size <= SMALL_INPUT_MAX
    if small:
        train_tf, val_tf = small_image_transforms(size, IMAGENET_MEAN, IMAGENET_STD, resize=True, hflip=hflip)
    else:
        train_tf, val_tf = large_image_transforms(size, hflip=hflip)
    train, val = image_folder_pair(data_dir, train_tf, val_tf)
    return train, val, DatasetInfo(name, len(train.classes), size, small_input=small)
