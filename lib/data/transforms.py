"""Image pipelines: the small-image (CIFAR-style) one and the ImageNet-style one, as the reference used them."""
from torchvision import transforms as T

# The reference normalizes CIFAR-100 with these CIFAR-10 statistics too (docs/classification.md, "Data"); kept for
# parity.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# At or below this input side the CIFAR-style pipeline (pad + random crop, no resized crop) is used.
SMALL_INPUT_MAX = 64
# The reference flips every second training image (torchvision's RandomHorizontalFlip default).
DEFAULT_HFLIP = 0.5


def flip(p):
    """[RandomHorizontalFlip(p)], or nothing for p == 0 (data whose class changes in a mirror: digits, text)."""
    return [T.RandomHorizontalFlip(p)] if p > 0 else []


def small_image_transforms(size, mean, std, resize=False, hflip=DEFAULT_HFLIP):
    """(train, val) for small images: pad-and-crop + flip (probability hflip) for training, no crop for validation.

    resize=True first scales the shorter side to `size` (and validation center-crops), for folders whose
    images are not already size x size; for images of exactly that size the resize leaves pixels unchanged.
    """
    head = [T.Resize(size)] if resize else []
    train = T.Compose(head + [
        T.RandomCrop(size, padding=size // 8),
        *flip(hflip),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])
    val = T.Compose(head + ([T.CenterCrop(size)] if resize else []) + [T.ToTensor(), T.Normalize(mean, std)])
    return train, val


def large_image_transforms(size, mean=IMAGENET_MEAN, std=IMAGENET_STD, scale=(0.08, 1.0), hflip=DEFAULT_HFLIP):
    """(train, val) ImageNet-style: random-resized crop + flip (probability hflip); validation resizes to
    size*256/224 and center-crops.

    A scale above 1 (the reference uses (0.08, 1.25)) is accepted by torchvision: draws whose area exceeds the
    image are rejected and redrawn, which tilts crops towards large ones.
    """
    train = T.Compose([
        T.RandomResizedCrop(size, scale=scale),
        *flip(hflip),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])
    val = T.Compose([
        T.Resize(int(size * 256 / 224)),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])
    return train, val
