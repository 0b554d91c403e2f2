"""A small synthetic dataset for offline smoke runs: no files, deterministic, and learnable."""
import torch
from torch.utils.data import Dataset

from lib.data.info import DatasetInfo
from lib.data.transforms import SMALL_INPUT_MAX
from lib.errors import ConfigError

# Image i of a split is drawn from seed 2 * i + split: the splits never share a seed, and seeds stay below 2**32
# (torch's CPU generator ignores higher bits).
_SPLIT_INDEX = {"train": 0, "val": 1}


class FakeDataset(Dataset):
    """`num_samples` images of shape (3, size, size), already normalized (no transform), labels index % num_classes.

    hflip: probability of a horizontal flip, drawn from torch's default generator (which the training loader seeds
    per sample); 0 (the default) draws nothing.

    Each class has its own per-channel mean (amplitude ~0.5) under unit Gaussian pixel noise, so a network can learn
    the classes within a few epochs. Image i is generated from its own seed when asked for, so the set costs no
    memory, is identical in every process, and does not touch the global RNG.
    """

    def __init__(self, num_samples, num_classes=10, size=32, split="train", hflip=0.0):
        self.num_samples = num_samples
        self.num_classes = num_classes
        self.size = size
        self.split_index = _SPLIT_INDEX[split]
        self.hflip = hflip
        self.class_means = 0.5 * torch.randn(num_classes, 3, 1, 1, generator=torch.Generator().manual_seed(67))

    def __len__(self):
        return self.num_samples

    def __getitem__(self, index):
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        label = index % self.num_classes
        noise_rng = torch.Generator().manual_seed(2 * index + self.split_index)
        image = self.class_means[label] + torch.randn(3, self.size, self.size, generator=noise_rng)
        if self.hflip > 0 and torch.rand(1).item() < self.hflip:
            image = image.flip(-1)
        return image, label


def build_fake(name, data_dir=None, input_size=None, download=True, num_train=256, num_val=128, num_classes=10,
               hflip=0.0):
    """(train, val, info) of FakeDataset; data_dir and download are ignored. hflip flips training images only
    (0 here, so that the library's fake data has no randomness unless asked; train_val.py passes --hflip)."""
    size = input_size or 32
    if size < 1 or num_train < 1 or num_val < 1 or num_classes < 2:
        raise ConfigError(f"fake data needs input_size, num_train, num_val >= 1 and num_classes >= 2, got "
                          f"{size}, {num_train}, {num_val}, {num_classes}")
    train = FakeDataset(num_train, num_classes, size, "train", hflip=hflip)
    val = FakeDataset(num_val, num_classes, size, "val")
    return train, val, DatasetInfo(name, num_classes, size, small_input=size <= SMALL_INPUT_MAX)
