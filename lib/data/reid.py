"""Person re-identification data: image sets (Market-1501, DukeMTMC-reID, MSMT17, your own folder, fake) and,
through lib/data/reid_video.py, video sets (MARS, iLIDS-VID, PRID-2011). docs/reid.md describes the layouts.

    from lib.data.reid_sets import build_reid_datasets
    train_set, query_set, gallery_set, info = build_reid_datasets("market1501", "data")
    image, pid, camid = train_set[i]     # (3, 256, 128) float32; pid relabelled 0..info.num_classes-1
    image, pid, camid = query_set[i]     # resized + normalized only; pid / camid as released (camid 0-based)
    clip, pid, camid = mars_train[i]     # video: (T, 3, H, W); query/gallery: (num_clips, T, 3, H, W)

Every list is sorted; pid -1 (junk) is dropped everywhere, Market's / DukeMTMC's pid 0 (distractors) stays in
the gallery. Training transforms draw every random choice from torch's default CPU generator, so through
lib.data.samplers.SeededAugmentation (and lib.data.reid_sampler) an item is a function of (seed, epoch, slot).
A missing dataset, an unreadable image and a file name that does not parse raise a one-line ConfigError naming it.
"""
import os
import re
from dataclasses import dataclass
from typing import Callable, List, NamedTuple, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from lib.data.info import DatasetInfo
from lib.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from lib.errors import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
# Market-1501 / DukeMTMC-reID / own folders: "0002_c1s1_000451_03.jpg", "-1_c3s2_...": pid, then the camera.
NAME_PATTERN = re.compile(r"^(-?\d+)_c(\d+)")
# BoT's recipe (Luo et al. 2019): 256 x 128, flip 0.5, 10-pixel zero padding + random crop, random erasing 0.5.
DEFAULT_SIZE = (256, 128)
DEFAULT_HFLIP, DEFAULT_PAD, DEFAULT_ERASING = 0.5, 10, 0.5

Sample = Tuple[object, int, int]  # (image path, or a tuple of frame paths for a tracklet; pid; camid)


class Splits(NamedTuple):
    train: List[Sample]
    query: List[Sample]
    gallery: List[Sample]


@dataclass(frozen=True)
class ReidDatasetInfo(DatasetInfo):
    """DatasetInfo (num_classes = training identities; input_size = the height) plus: img_size (H, W), video,
    seq_len (frames per clip, video), test_sampling, split (iLIDS-VID / PRID-2011: 0..9), num_splits, and the
    counts of images (tracklets for video) and identities of each set."""
    img_size: Tuple[int, int] = DEFAULT_SIZE
    video: bool = False
    seq_len: int = 1
    test_sampling: str = ""
    split: int = 0
    num_splits: int = 1
    num_train: int = 0
    num_query: int = 0
    num_gallery: int = 0
    num_query_ids: int = 0
    num_gallery_ids: int = 0


# ------------------------------------------------------------------------------------------------ transforms
class ReidTransform:
    """BoT's pipeline on uint8 tensors (..., 3, h, w) (an image, or a clip's stacked frames, which then share one
    draw of every random choice): resize to (H, W); training adds flip(p), zero-pad + random crop back to (H, W),
    normalize, random erasing(p) (torchvision's; erased pixels 0 = the mean after normalization); test resizes
    and normalizes only. p = 0 / pad = 0 draw nothing."""

    def __init__(self, size=DEFAULT_SIZE, train=False, hflip=DEFAULT_HFLIP, pad=DEFAULT_PAD,
                 erasing=DEFAULT_ERASING, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        for name, p in (("hflip", hflip), ("erasing", erasing)):
            if not 0 <= p <= 1:
                raise ConfigError(f"{name} is a probability in [0, 1], got {p}")
        if pad < 0 or len(size) != 2 or min(size) < 1:
            raise ConfigError(f"need pad >= 0 and a positive (height, width); got pad {pad}, size {size}")
        self.size = tuple(int(s) for s in size)
        self.resize = T.Resize(self.size, antialias=True)
        self.normalize = T.Normalize(mean, std)
        steps = []
        if train and hflip > 0:
            steps.append(T.RandomHorizontalFlip(hflip))
        if train and pad > 0:
            steps += [T.Pad(pad), T.RandomCrop(self.size)]
        self.geometric = T.Compose(steps)
        self.erase = T.RandomErasing(erasing, scale=(0.02, 0.4), ratio=(0.3, 3.33), value=0) \
            if train and erasing > 0 else None

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.after_resize(self.resize(pixels))

    def after_resize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Everything but the resize, on uint8 (..., 3, H, W) already at the target size."""
        x = self.geometric(pixels.float().div_(255))
        x = self.normalize(x)
        return self.erase(x) if self.erase is not None else x


def reid_transforms(size=DEFAULT_SIZE, hflip=DEFAULT_HFLIP, pad=DEFAULT_PAD, erasing=DEFAULT_ERASING):
    """(train, test) ReidTransforms."""
    return ReidTransform(size, True, hflip, pad, erasing), ReidTransform(size)


# ------------------------------------------------------------------------------------------------ reading
def read_image(path) -> torch.Tensor:
    """An image file as a uint8 (3, h, w) tensor; a ConfigError naming the file if it cannot be read."""
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read image {path}: {error}") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def find_root(data_dir: str, name: str, candidates: Sequence[str], marker: str, hint: str) -> str:
    """The first of data_dir/<candidate> (then data_dir itself) that holds `marker`, else a ConfigError."""
    for root in [os.path.join(data_dir, c) for c in candidates] + [data_dir]:
        if os.path.exists(os.path.join(root, marker)):
            return root
    raise ConfigError(f"{name}: no {candidates[0]}/{marker} under {data_dir or '.'} ({hint})")


def image_files(folder: str) -> List[str]:
    if not os.path.isdir(folder):
        raise ConfigError(f"missing folder {folder}")
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))


def scan_named_folder(folder: str, camera_base: int = 1) -> List[Sample]:
    """(path, pid, camid) of every image named <pid>_c<camera>..., sorted by name; pid -1 (junk) dropped;
    camid = camera - camera_base. A name that does not parse: ConfigError naming it."""
    samples = []
    for name in image_files(folder):
        match = NAME_PATTERN.match(name)
        if match is None:
            raise ConfigError(f"cannot parse the re-ID file name {os.path.join(folder, name)} (expected "
                              "<pid>_c<camera>..., e.g. 0002_c1s1_000451_03.jpg)")
        pid, camera = int(match.group(1)), int(match.group(2))
        if pid != -1:
            samples.append((os.path.join(folder, name), pid, camera - camera_base))
    return samples


def relabel(samples: List[Sample]) -> Tuple[List[Sample], int]:
    """Training pids mapped to 0..n-1 in sorted order; returns (samples, n)."""
    pids = sorted({pid for _, pid, _ in samples})
    index = {pid: i for i, pid in enumerate(pids)}
    return [(path, index[pid], cam) for path, pid, cam in samples], len(pids)


def read_market_style(data_dir: str, name: str, candidates: Sequence[str], hint: str) -> Splits:
    """Market-1501 / DukeMTMC-reID: {bounding_box_train, query, bounding_box_test}/<pid>_c<cam>...jpg."""
    root = find_root(data_dir, name, candidates, "bounding_box_train", hint)
    train = scan_named_folder(os.path.join(root, "bounding_box_train"))
    query = scan_named_folder(os.path.join(root, "query"))
    gallery = scan_named_folder(os.path.join(root, "bounding_box_test"))
    return Splits(train, query, gallery)


def read_market(data_dir: str, **unused) -> Splits:
    return read_market_style(data_dir, "market1501", ("Market-1501-v15.09.15", "market1501", "Market-1501"),
                             "extract Market-1501-v15.09.15.zip there")


def read_duke(data_dir: str, **unused) -> Splits:
    return read_market_style(data_dir, "dukemtmcreid", ("DukeMTMC-reID", "dukemtmc-reid", "dukemtmcreid"),
                             "extract DukeMTMC-reID.zip there")


def read_msmt_list(list_path: str, image_dir: str) -> List[Sample]:
    """MSMT17 list lines "<relative path> <pid>"; camid from the file name's third field (0000_000_01_...)."""
    if not os.path.isfile(list_path):
        raise ConfigError(f"msmt17: missing list file {list_path}")
    samples = []
    with open(list_path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            parts = line.split()
            fields = os.path.basename(parts[0]).split("_")
            try:
                pid, camera = int(parts[1]), int(fields[2])
            except (IndexError, ValueError):
                raise ConfigError(f"msmt17: cannot parse line {number} of {list_path}: {line.strip()!r}") from None
            samples.append((os.path.join(image_dir, parts[0]), pid, camera - 1))
    return sorted(samples)


def read_msmt17(data_dir: str, **unused) -> Splits:
    """MSMT17_V1/{train,test} or MSMT17_V2/{mask_train_v2,mask_test_v2} + list_{train,val,query,gallery}.txt.
    Training = list_train + list_val (the val list holds more images of the training identities; together they
    are the 32,621 training images the paper counts)."""
    for version, train_dir, test_dir in (("MSMT17_V2", "mask_train_v2", "mask_test_v2"),
                                         ("MSMT17_V1", "train", "test")):
        for root in (os.path.join(data_dir, version), os.path.join(data_dir, "msmt17", version)):
            if os.path.isdir(os.path.join(root, train_dir)):
                train_images, test_images = os.path.join(root, train_dir), os.path.join(root, test_dir)
                train = read_msmt_list(os.path.join(root, "list_train.txt"), train_images)
                train += read_msmt_list(os.path.join(root, "list_val.txt"), train_images)
                return Splits(sorted(train), read_msmt_list(os.path.join(root, "list_query.txt"), test_images),
                              read_msmt_list(os.path.join(root, "list_gallery.txt"), test_images))
    raise ConfigError(f"msmt17: neither MSMT17_V2/mask_train_v2 nor MSMT17_V1/train under {data_dir or '.'} "
                      "(extract MSMT17_V1.tar.gz or MSMT17_V2.tar.gz there)")


def read_reidfolder(data_dir: str, **unused) -> Splits:
    """Your own data: {train, query, gallery}/<pid>_c<camera>_anything.(jpg|png|...); cameras as written."""
    return Splits(*(scan_named_folder(os.path.join(data_dir, part), camera_base=0)
                    for part in ("train", "query", "gallery")))


# ------------------------------------------------------------------------------------------------ datasets
class ReidImageDataset(Dataset):
    """Items (transform(read(path)), pid, camid) of samples [(path, pid, camid)]; pids / camids: the labels."""

    def __init__(self, samples: List[Sample], transform: Callable, read: Callable = read_image):
        self.samples, self.transform, self.read = samples, transform, read
        self.pids = [pid for _, pid, _ in samples]
        self.camids = [cam for _, _, cam in samples]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, pid, camid = self.samples[index]
        return self.transform(self.read(path)), pid, camid


def fake_read(key) -> torch.Tensor:
    """A generated uint8 image for key ("fake", pid, seed): a per-identity colour under noise, (3, 64, 32)."""
    _, pid, seed = key
    colour = torch.rand(3, 1, 1, generator=torch.Generator().manual_seed(1000 + pid)) * 200
    noise = torch.rand(3, 64, 32, generator=torch.Generator().manual_seed(seed)) * 55
    return (colour + noise).to(torch.uint8)


def read_fake(data_dir=None, num_ids=8, num_test_ids=4, per_id=4, **unused) -> Splits:
    """Generated: num_ids training identities with per_id images over 2 cameras; num_test_ids test identities,
    one query each (camera 0) and per_id gallery images (camera 1), plus 2 distractors (pid 0)."""
    train = [(("fake", pid, 10_000 * pid + i), pid, i % 2) for pid in range(1, num_ids + 1) for i in range(per_id)]
    test_ids = range(num_ids + 1, num_ids + 1 + num_test_ids)
    query = [(("fake", pid, 10_000 * pid + 99), pid, 0) for pid in test_ids]
    gallery = [(("fake", pid, 10_000 * pid + i), pid, 1) for pid in test_ids for i in range(per_id)]
    gallery += [(("fake", 0, 7 + i), 0, 1) for i in range(2)]
    return Splits(train, query, gallery)


IMAGE_READERS = {"market1501": read_market, "dukemtmcreid": read_duke, "msmt17": read_msmt17,
                 "reidfolder": read_reidfolder, "fake": read_fake}
