"""CIFAR-10 / CIFAR-100 from the official python-pickle batches.

torchvision.datasets.CIFAR10 md5-checks every batch file each time it is constructed, so it only accepts the
exact official files. This reader takes the same on-disk format (and gives the same samples: PIL image, int
label) without that check, so small test copies load too; torchvision is still used to download and extract
the official archive, which is md5-checked there.
"""
import http.client
import os
import pickle
import tarfile
from dataclasses import dataclass

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import download_and_extract_archive, extract_archive

from lib.data.info import DatasetInfo
from lib.data.transforms import CIFAR_MEAN, CIFAR_STD, DEFAULT_HFLIP, small_image_transforms
from lib.errors import ConfigError

HOME_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"


@dataclass(frozen=True)
class CifarSpec:
    """Where one CIFAR variant lives on disk and how its pickles are keyed."""
    title: str
    folder: str
    archive: str
    url: str
    md5: str
    train_files: tuple
    test_files: tuple
    label_key: str
    meta_file: str
    meta_key: str
    num_classes: int


def _spec(title, tv_class, label_key, num_classes):
    return CifarSpec(
        title=title, folder=tv_class.base_folder, archive=tv_class.filename, url=tv_class.url,
        md5=tv_class.tgz_md5, train_files=tuple(name for name, _ in tv_class.train_list),
        test_files=tuple(name for name, _ in tv_class.test_list), label_key=label_key,
        meta_file=tv_class.meta["filename"], meta_key=tv_class.meta["key"], num_classes=num_classes)


CIFAR_SPECS = {
    "cifar10": _spec("CIFAR-10", CIFAR10, "labels", 10),
    "cifar100": _spec("CIFAR-100", CIFAR100, "fine_labels", 100),
}


def _load_pickle(path):
    """One CIFAR pickle as a dict with str keys.

    The official files were written by Python 2: read with latin1 their keys are str, read with
    encoding='bytes' (as the CIFAR page suggests) they are bytes; accept files written either way.
    """
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise ConfigError(f"malformed CIFAR file {path}: {e}") from e
    if not isinstance(entry, dict):
        raise ConfigError(f"malformed CIFAR file {path}: expected a pickled dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


class CifarDataset(Dataset):
    """One split of CIFAR-10/100 read from <root>/<spec.folder>; items are (PIL RGB 32x32 image, int label)."""

    def __init__(self, root, spec, train, transform=None):
        self.transform = transform
        folder = os.path.join(root, spec.folder)
        images, labels = [], []
        for name in spec.train_files if train else spec.test_files:
            path = os.path.join(folder, name)
            entry = _load_pickle(path)
            if "data" not in entry or spec.label_key not in entry:
                raise ConfigError(f"malformed CIFAR file {path}: needs keys 'data' and '{spec.label_key}'")
            data = np.asarray(entry["data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(entry[spec.label_key]) != len(data):
                raise ConfigError(f"malformed CIFAR file {path}: expected data (n, 3072) and n labels")
            images.append(data)
            labels.extend(int(label) for label in entry[spec.label_key])
        # Rows hold the red plane, then green, then blue, each 32x32 row-major: turn into HWC for PIL.
        self.data = np.concatenate(images).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        self.targets = labels
        self.classes = list(_load_pickle(os.path.join(folder, spec.meta_file)).get(spec.meta_key, []))

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        image = Image.fromarray(self.data[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


def _is_complete(root, spec):
    folder = os.path.join(root, spec.folder)
    names = spec.train_files + spec.test_files + (spec.meta_file,)
    return all(os.path.isfile(os.path.join(folder, name)) for name in names)


def ensure_cifar(root, spec, download):
    """Make <root>/<spec.folder> exist: use it as is, else extract a local archive, else download (if allowed)."""
    if _is_complete(root, spec):
        return
    hint = f"place {spec.archive} from {HOME_PAGE} (or its extracted {spec.folder} folder) in {root}"
    archive = os.path.join(root, spec.archive)
    if os.path.isfile(archive):
        # A user-supplied archive is trusted as is: no md5 check, so no network access is ever needed here.
        try:
            extract_archive(archive, root)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ConfigError(f"could not extract {archive} ({e}): {hint}") from e
    elif not download:
        raise ConfigError(f"{spec.title} not found in {root}: {hint}")
    else:
        try:
            download_and_extract_archive(spec.url, root, filename=spec.archive, md5=spec.md5)
        # URLError is an OSError; torchvision raises RuntimeError when the download fails its md5 check.
        except (OSError, http.client.HTTPException, RuntimeError, tarfile.TarError) as e:
            if os.path.isfile(archive):  # a partial download would later be mistaken for a user-placed archive
                os.remove(archive)
            reason = str(e).replace("\n", " ")
            raise ConfigError(
                f"could not download {spec.title} into {root} (offline? {type(e).__name__}: {reason}): {hint}") from e
    if not _is_complete(root, spec):
        raise ConfigError(f"{spec.title} files missing from {os.path.join(root, spec.folder)}: {hint}")


def build_cifar(name, data_dir, input_size=None, download=True, hflip=DEFAULT_HFLIP):
    """(train, test, info) for 'cifar10' / 'cifar100' under data_dir, with the reference's transforms."""
    if input_size not in (None, 32):
        raise ConfigError(f"{name} images are 32x32: input_size must be 32, got {input_size}")
    spec = CIFAR_SPECS[name]
    root = os.fspath(data_dir) or "."
    ensure_cifar(root, spec, download)
    train_tf, val_tf = small_image_transforms(32, CIFAR_MEAN, CIFAR_STD, hflip=hflip)
    train = CifarDataset(root, spec, train=True, transform=train_tf)
    val = CifarDataset(root, spec, train=False, transform=val_tf)
    return train, val, DatasetInfo(name, spec.num_classes, 32, small_input=True)
