"""Writers of tiny datasets in the real on-disk formats, for tests (no network, a few dozen images, < 1 s).

Images are class-dependent (a per-class color plus noise) so that end-to-end training tests can learn something.
"""
import os
import pickle

import numpy as np
from PIL import Image


def class_images(labels, height, width, seed=0):
    """uint8 images (n, height, width, 3): class c has its own mean color, plus uniform noise of +-40."""
    rng = np.random.default_rng(seed)
    palette = np.random.default_rng(1234).integers(50, 206, size=(max(labels, default=0) + 1, 3))
    noise = rng.integers(-40, 41, size=(len(labels), height, width, 3))
    return np.clip(palette[np.asarray(labels, dtype=int)][:, None, None, :] + noise, 0, 255).astype(np.uint8)


def _dump(path, obj, bytes_keys):
    if bytes_keys:
        obj = {key.encode("latin1"): value for key, value in obj.items()}
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar(root, kind="cifar10", n_train=50, n_test=20, seed=0, bytes_keys=False):
    """Write root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta} (kind 'cifar10') or
    root/cifar-100-python/{train,test,meta} (kind 'cifar100') as the official python pickles.

    Each batch is a dict: 'data' uint8 (n, 3072) holding the R, G, B planes of a 32x32 image in turn, and a
    list of int labels ('labels'; CIFAR-100: 'fine_labels' and 'coarse_labels'), plus 'batch_label' and
    'filenames'. Keys are str, as the official Python 2 files read with encoding='latin1'; bytes_keys=True writes
    them as bytes instead (as those files read with encoding='bytes').
    Returns {'train': (images uint8 (n, 32, 32, 3), labels), 'test': (...)} in file order.
    """
    num_classes = 10 if kind == "cifar10" else 100
    label_key = "labels" if kind == "cifar10" else "fine_labels"
    folder = os.path.join(root, "cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python")
    os.makedirs(folder, exist_ok=True)
    written = {}

    def write_batch(name, labels, batch_seed, title):
        images = class_images(labels, 32, 32, seed=batch_seed)
        entry = {"batch_label": title, label_key: list(labels),
                 "data": images.transpose(0, 3, 1, 2).reshape(len(labels), -1),
                 "filenames": [f"img_{i}.png" for i in range(len(labels))]}
        if kind == "cifar100":
            entry["coarse_labels"] = [label // 5 for label in labels]
        _dump(os.path.join(folder, name), entry, bytes_keys)
        return images

    train_labels = [i % num_classes for i in range(n_train)]
    test_labels = [(i * 7) % num_classes for i in range(n_test)]
    if kind == "cifar10":
        parts = np.array_split(np.arange(n_train), 5)
        images = [write_batch(f"data_batch_{k + 1}", [train_labels[i] for i in part], seed + k,
                              f"training batch {k + 1} of 5") for k, part in enumerate(parts)]
        written["train"] = (np.concatenate(images), train_labels)
        written["test"] = (write_batch("test_batch", test_labels, seed + 10, "testing batch 1 of 1"), test_labels)
        _dump(os.path.join(folder, "batches.meta"), {"label_names": [f"class{c}" for c in range(10)],
                                                     "num_cases_per_batch": 10000, "num_vis": 3072}, bytes_keys)
    else:
        written["train"] = (write_batch("train", train_labels, seed, "training batch 1 of 1"), train_labels)
        written["test"] = (write_batch("test", test_labels, seed + 10, "testing batch 1 of 1"), test_labels)
        _dump(os.path.join(folder, "meta"), {"fine_label_names": [f"fine{c}" for c in range(100)],
                                             "coarse_label_names": [f"coarse{c}" for c in range(20)]}, bytes_keys)
    return written


def write_imagefolder(root, classes=("cat", "dog", "frog"), n_per_class=(4, 2), size=32, ext=".png", seed=0):
    """Write root/train/<class>/<i><ext> and root/val/<class>/<i><ext>; n_per_class = (train, val) per class.

    size is an int (square) or (width, height). Returns root.
    """
    width, height = (size, size) if isinstance(size, int) else size
    for split, count, split_seed in (("train", n_per_class[0], seed), ("val", n_per_class[1], seed + 1)):
        labels = [c for c in range(len(classes)) for _ in range(count)]
        images = class_images(labels, height, width, seed=split_seed)
        for k, (label, image) in enumerate(zip(labels, images)):
            folder = os.path.join(root, split, classes[label])
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(image).save(os.path.join(folder, f"{k:04d}{ext}"))
    return root


def write_imagenet_lists(root, num_classes=3, n_train_per_class=4, n_val=6, size=(64, 48), seed=0):
    """Write the reference's ImageNet layout under root/imagenet and return that folder:

    imagenet_train.list / imagenet_val.list, one "path,label" per line with paths relative to root/imagenet
    ("train/n00000000/n00000000_0.JPEG,0", "val/ILSVRC2012_val_00000001.JPEG,2"), and those JPEG files.
    """
    base = os.path.join(root, "imagenet")
    width, height = size
    wnids = [f"n{10000000 + c:08d}" for c in range(num_classes)]
    train = [(f"train/{wnids[c]}/{wnids[c]}_{k}.JPEG", c) for c in range(num_classes) for k in range(n_train_per_class)]
    val = [(f"val/ILSVRC2012_val_{k + 1:08d}.JPEG", (k * 2) % num_classes) for k in range(n_val)]
    for name, samples, split_seed in (("imagenet_train.list", train, seed), ("imagenet_val.list", val, seed + 1)):
        images = class_images([label for _, label in samples], height, width, seed=split_seed)
        for (path, _), image in zip(samples, images):
            os.makedirs(os.path.dirname(os.path.join(base, path)), exist_ok=True)
            Image.fromarray(image).save(os.path.join(base, path), format="JPEG", quality=95)
        with open(os.path.join(base, name), "w") as f:
            f.writelines(f"{path},{label}\n" for path, label in samples)
    return base
