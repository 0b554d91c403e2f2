"""Data layer: every dataset builds from tiny files in its real on-disk format; samplers give exact orders."""
import os
import tarfile
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from datagen import write_cifar, write_imagefolder, write_imagenet_lists
from PIL import Image

from lib.data import (
    DATASETS,
    ContiguousShardSampler,
    EpochShuffleSampler,
    build_datasets,
    build_loaders,
    read_list_file,
)
from lib.data.transforms import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD
from lib.errors import ConfigError


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every test runs offline: any attempt to open a URL fails as it would without a network."""
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")
    monkeypatch.setattr(urllib.request, "urlopen", offline)


def normalized(images_hwc_uint8, mean, std):
    """What ToTensor + Normalize must give for uint8 HWC images: (N, 3, H, W) float."""
    x = torch.from_numpy(np.array(images_hwc_uint8)).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


# ---- CIFAR ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,bytes_keys", [("cifar10", False), ("cifar10", True), ("cifar100", False)])
def test_cifar_loads_official_format(tmp_path, kind, bytes_keys):
    written = write_cifar(tmp_path, kind, n_train=23, n_test=9, bytes_keys=bytes_keys)
    train, test, info = build_datasets(kind, tmp_path)  # download=True, but the files are there: no network
    assert (info.num_classes, info.input_size, info.small_input) == ((10 if kind == "cifar10" else 100), 32, True)
    assert len(train) == 23 and len(test) == 9
    assert train.targets == written["train"][1] and test.targets == written["test"][1]
    images = torch.stack([test[i][0] for i in range(len(test))])
    torch.testing.assert_close(images, normalized(written["test"][0], CIFAR_MEAN, CIFAR_STD))
    image, label = train[5]
    assert image.shape == (3, 32, 32) and label == written["train"][1][5]


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_reader_matches_torchvision(tmp_path, monkeypatch, kind):
    """Our reader gives torchvision's samples; torchvision itself refuses the tiny files only for their md5s."""
    import torchvision.datasets.cifar as tv_cifar
    write_cifar(tmp_path, kind, n_train=12, n_test=4)
    ours, _, _ = build_datasets(kind, tmp_path, download=False)
    tv_class = tv_cifar.CIFAR10 if kind == "cifar10" else tv_cifar.CIFAR100
    with pytest.raises(RuntimeError, match="corrupted"):
        tv_class(tmp_path, train=True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    reference = tv_class(tmp_path, train=True)
    assert np.array_equal(ours.data, reference.data) and ours.targets == reference.targets
    assert ours.classes == reference.classes


def test_cifar_train_transform_pads_crops_and_flips(tmp_path):
    written = write_cifar(tmp_path, n_train=5, n_test=1)
    train, _, _ = build_datasets("cifar10", tmp_path, download=False)
    torch.manual_seed(0)
    crops = torch.stack([train[0][0] for _ in range(20)])
    clean = normalized(written["train"][0][:1], CIFAR_MEAN, CIFAR_STD)[0]
    assert crops.shape == (20, 3, 32, 32)
    assert not all(torch.equal(crop, clean) for crop in crops)  # random shifts/flips happen


def test_cifar_offline_download_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as caught:
        build_datasets("cifar100", tmp_path / "new")
    message = str(caught.value)
    assert "\n" not in message
    assert "could not download CIFAR-100" in message and "cifar-100-python.tar.gz" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in message and str(tmp_path / "new") in message


def test_cifar_missing_without_download_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="CIFAR-10 not found.*cifar-10-python.tar.gz"):
        build_datasets("cifar10", tmp_path / "absent", download=False)


def test_cifar_local_archive_is_extracted_offline(tmp_path):
    written = write_cifar(tmp_path / "src", n_train=10, n_test=4)
    (tmp_path / "data").mkdir()
    with tarfile.open(tmp_path / "data" / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    _, test, _ = build_datasets("cifar10", tmp_path / "data")
    assert test.targets == written["test"][1]


def test_cifar_malformed_batch_is_a_config_error(tmp_path):
    write_cifar(tmp_path, n_train=5, n_test=2)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ConfigError, match="malformed CIFAR file"):
        build_datasets("cifar10", tmp_path)


def test_cifar_rejects_other_input_sizes(tmp_path):
    with pytest.raises(ConfigError, match="input_size must be 32"):
        build_datasets("cifar10", tmp_path, input_size=64)


# ---- ImageNet and image folders -------------------------------------------------------------------------------

def test_imagenet_list_files(tmp_path):
    base = write_imagenet_lists(tmp_path, num_classes=3, n_train_per_class=2, n_val=4, size=(64, 48))
    train, val, info = build_datasets("imagenet", tmp_path, input_size=96)
    assert (info.num_classes, info.input_size, info.small_input) == (3, 96, False)
    assert len(train) == 6 and len(val) == 4
    expected = read_list_file(os.path.join(base, "imagenet_val.list"))
    assert [label for _, label in expected] == [val[i][1] for i in range(len(val))]
    image, _ = val[0]
    assert image.shape == (3, 96, 96) and image.dtype == torch.float32
    torch.manual_seed(0)
    for _ in range(30):  # scale up to 1.25 of the area: some draws are rejected, all must give the crop size
        assert train[0][0].shape == (3, 96, 96)


def test_imagenet_default_size_is_224(tmp_path):
    write_imagenet_lists(tmp_path, num_classes=2, n_train_per_class=1, n_val=1)
    train, val, info = build_datasets("imagenet", tmp_path)
    assert info.input_size == 224 and val[0][0].shape == train[0][0].shape == (3, 224, 224)


@pytest.mark.parametrize("under_imagenet", [True, False])
def test_imagenet_folder_layout(tmp_path, under_imagenet):
    root = tmp_path / "imagenet" if under_imagenet else tmp_path
    write_imagefolder(root, classes=("n01", "n02"), n_per_class=(3, 2), size=(40, 30), ext=".JPEG")
    train, val, info = build_datasets("imagenet", tmp_path, input_size=64)
    assert info.num_classes == 2 and info.small_input is False  # imagenet always uses its own pipeline
    assert len(train) == 6 and len(val) == 4
    assert sorted(val.targets) == [0, 0, 1, 1] and val[3][0].shape == (3, 64, 64)


def test_imagenet_missing_names_both_layouts(tmp_path):
    with pytest.raises(ConfigError) as caught:
        build_datasets("imagenet", tmp_path)
    message = str(caught.value)
    assert "imagenet_train.list" in message and "(train|val)/<class>" in message and "\n" not in message


def test_list_file_parsing_is_tolerant_and_strict_where_it_matters(tmp_path):
    good = tmp_path / "good.list"
    good.write_text("a/x 1.JPEG,3\r\n\n  b/y.JPEG , 0  \nc,d.JPEG,2\ne/z.JPEG 7\n")
    assert read_list_file(good) == [("a/x 1.JPEG", 3), ("b/y.JPEG", 0), ("c,d.JPEG", 2), ("e/z.JPEG", 7)]
    for bad_line in ("a.JPEG,cat", "a.JPEG,-1", "a.JPEG", ",4"):
        bad = tmp_path / "bad.list"
        bad.write_text(f"ok.JPEG,1\n{bad_line}\n")
        with pytest.raises(ConfigError, match="bad.list:2:"):
            read_list_file(bad)


def test_list_file_with_wrong_root_is_a_config_error(tmp_path):
    base = write_imagenet_lists(tmp_path, num_classes=2, n_train_per_class=1, n_val=1)
    with open(os.path.join(base, "imagenet_val.list"), "w") as f:
        f.write("elsewhere/missing.JPEG,0\n")
    with pytest.raises(ConfigError, match="does not exist: paths in the list are relative to"):
        build_datasets("imagenet", tmp_path)


def test_imagefolder_small_pipeline_keeps_pixels(tmp_path):
    write_imagefolder(tmp_path, classes=("cat", "dog", "frog"), n_per_class=(2, 2), size=32)
    train, val, info = build_datasets("imagefolder", tmp_path, input_size=32)
    assert (info.num_classes, info.input_size, info.small_input) == (3, 32, True)
    path, label = val.samples[3]
    pixels = np.asarray(Image.open(path).convert("RGB"))[None]
    torch.testing.assert_close(val[3][0], normalized(pixels, IMAGENET_MEAN, IMAGENET_STD)[0])
    assert label == val[3][1] == 1 and train[0][0].shape == (3, 32, 32)


def test_imagefolder_resizes_other_sizes(tmp_path):
    write_imagefolder(tmp_path, n_per_class=(1, 1), size=(50, 40))
    train, val, _ = build_datasets("imagefolder", tmp_path, input_size=32)
    assert train[0][0].shape == val[0][0].shape == (3, 32, 32)
    train, val, info = build_datasets("imagefolder", tmp_path, input_size=80)
    assert not info.small_input and train[0][0].shape == val[0][0].shape == (3, 80, 80)


def test_imagefolder_val_uses_train_class_indices(tmp_path):
    write_imagefolder(tmp_path, classes=("a", "b", "c"), n_per_class=(1, 1))
    for image in (tmp_path / "val" / "a").iterdir():
        image.unlink()
    (tmp_path / "val" / "a").rmdir()
    _, val, info = build_datasets("imagefolder", tmp_path, input_size=32)
    assert info.num_classes == 3 and sorted(val.targets) == [1, 2]  # 'b' stays 1, not renumbered to 0
    write_imagefolder(tmp_path / "extra", classes=("zebra",), n_per_class=(0, 1))
    os.rename(tmp_path / "extra" / "val" / "zebra", tmp_path / "val" / "zebra")
    with pytest.raises(ConfigError, match="classes not in train/: zebra"):
        build_datasets("imagefolder", tmp_path, input_size=32)


def test_missing_data_dir_is_a_config_error(tmp_path):
    for name in ("imagefolder", "imagenet"):
        with pytest.raises(ConfigError, match="does not exist"):
            build_datasets(name, tmp_path / "absent")
    with pytest.raises(ConfigError, match="imagefolder data not found"):
        build_datasets("imagefolder", tmp_path)


def test_unknown_dataset_lists_the_valid_names():
    with pytest.raises(ConfigError) as caught:
        build_datasets("mnist", "data")
    assert all(name in str(caught.value) for name in DATASETS) and "'mnist'" in str(caught.value)


# ---- fake -----------------------------------------------------------------------------------------------------

def test_fake_is_deterministic_sized_and_learnable():
    train, val, info = build_datasets("fake", None, num_train=200, num_val=100)
    again, _, _ = build_datasets("fake", "ignored")
    assert (info.num_classes, info.input_size, info.small_input, len(train), len(val)) == (10, 32, True, 200, 100)
    torch.manual_seed(1)
    assert torch.equal(train[17][0], again[17][0]) and train[17][1] == 7
    assert not torch.equal(train[3][0], val[3][0])
    # Nearest class mean of the per-channel averages must beat chance (10%) by far.
    def features(dataset):
        return torch.stack([dataset[i][0].mean((1, 2)) for i in range(len(dataset))]), \
            torch.tensor([dataset[i][1] for i in range(len(dataset))])
    x, y = features(train)
    centers = torch.stack([x[y == c].mean(0) for c in range(10)])
    vx, vy = features(val)
    accuracy = (torch.cdist(vx, centers).argmin(1) == vy).float().mean()
    assert accuracy > 0.8
    assert build_datasets("fake", None, input_size=96)[0][0][0].shape == (3, 96, 96)


# ---- samplers and loaders -------------------------------------------------------------------------------------

@pytest.mark.parametrize("world,length", [(2, 10), (2, 11), (3, 10), (3, 2)])
def test_validation_shards_cover_every_index_once(world, length):
    shards = [list(ContiguousShardSampler(range(length), world, rank)) for rank in range(world)]
    assert sorted(i for shard in shards for i in shard) == list(range(length))
    assert [i for shard in shards for i in shard] == list(range(length))  # contiguous, in rank order
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert [len(ContiguousShardSampler(range(length), world, r)) for r in range(world)] == list(map(len, shards))


def epoch_order(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_train_order_is_a_function_of_seed_and_epoch():
    data = range(50)
    run = EpochShuffleSampler(data, seed=67)
    orders = [epoch_order(run, epoch) for epoch in range(4)]
    resumed = EpochShuffleSampler(data, seed=67)  # a fresh process resuming at epoch 3
    assert epoch_order(resumed, 3) == orders[3]
    assert len({tuple(order) for order in orders}) == 4  # reshuffled every epoch
    assert sorted(i for i, _ in orders[0]) == list(range(50))
    assert epoch_order(EpochShuffleSampler(data, seed=68), 3) != orders[3]
    # Without set_epoch the sampler still moves on each time it is iterated.
    forgetful = EpochShuffleSampler(data, seed=67)
    assert [list(forgetful) for _ in range(3)] == orders[:3]


def test_distributed_train_ranks_split_one_permutation():
    ranks = [epoch_order(EpochShuffleSampler(range(12), 3, rank, seed=5), 2) for rank in range(3)]
    assert sorted(i for order in ranks for i, _ in order) == list(range(12))


def test_train_batches_do_not_depend_on_workers_or_global_rng(tmp_path):
    write_cifar(tmp_path, n_train=24, n_test=10)
    train, val, _ = build_datasets("cifar10", tmp_path, download=False)

    def epoch_batches(workers, epoch):
        train_loader, _, sampler = build_loaders(train, val, batch_size=8, workers=workers, seed=67)
        sampler.set_epoch(epoch)
        return [batch for batch in train_loader]

    torch.manual_seed(0)
    state = torch.get_rng_state()
    in_process = epoch_batches(0, 1)
    assert torch.equal(torch.get_rng_state(), state)  # the training loop's RNG stream is left alone
    torch.manual_seed(123)
    with_workers = epoch_batches(2, 1)
    assert len(in_process) == 3
    for (x0, y0), (x1, y1) in zip(in_process, with_workers, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    other_epoch = epoch_batches(0, 2)
    assert not torch.equal(in_process[0][0], other_epoch[0][0])


def test_distributed_loaders_take_rank_and_world_from_the_process_group(tmp_path):
    import torch.distributed as dist
    train, val, _ = build_datasets("fake", None, num_train=20, num_val=10)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        train_loader, val_loader, sampler = build_loaders(train, val, 4, 0, distributed=True, seed=3)
        assert (sampler.num_replicas, sampler.rank) == (1, 0)
        assert sum(len(y) for _, y in val_loader) == 10 and sum(len(y) for _, y in train_loader) == 20
        assert epoch_order(sampler, 1) == epoch_order(EpochShuffleSampler(train, seed=3), 1)
    finally:
        dist.destroy_process_group()


def test_loaders_shapes_and_sequential_validation():
    train, val, _ = build_datasets("fake", None, num_train=20, num_val=10)
    train_loader, val_loader, sampler = build_loaders(train, val, batch_size=8, workers=0)
    assert [len(y) for _, y in train_loader] == [8, 8, 4]  # the last partial batch is kept
    assert torch.cat([y for _, y in val_loader]).tolist() == [i % 10 for i in range(10)]
    assert isinstance(sampler, EpochShuffleSampler)
    with pytest.raises(RuntimeError, match="torch.distributed"):
        build_loaders(train, val, 8, 0, distributed=True)
    with pytest.raises(ConfigError):
        build_loaders(train, val, 0, 0)


# ---- horizontal flips (--hflip) -----------------------------------------------------------------------------------

def _flip_datasets(tmp_path, hflip):
    write_cifar(tmp_path / "cifar", "cifar10", n_train=10, n_test=5)
    write_imagenet_lists(tmp_path / "lists", num_classes=2, n_train_per_class=2, n_val=2)
    write_imagefolder(tmp_path / "folder", classes=("a", "b"), n_per_class=(2, 1), size=40)
    return {"cifar10": build_datasets("cifar10", tmp_path / "cifar", download=False, hflip=hflip)[0],
            "imagenet": build_datasets("imagenet", tmp_path / "lists", input_size=32, hflip=hflip)[0],
            "imagefolder small": build_datasets("imagefolder", tmp_path / "folder", input_size=32, hflip=hflip)[0],
            "imagefolder large": build_datasets("imagefolder", tmp_path / "folder", input_size=80, hflip=hflip)[0],
            "fake": build_datasets("fake", None, num_train=4, num_val=2, hflip=hflip)[0]}


def _item(dataset, index, seed):
    torch.manual_seed(seed)  # the training loader seeds each sample's augmentation so (SeededAugmentation)
    return dataset[index][0]


def test_hflip_one_always_flips_zero_never_and_the_default_sometimes(tmp_path):
    never, always = _flip_datasets(tmp_path, 0.0), _flip_datasets(tmp_path, 1.0)
    half = _flip_datasets(tmp_path, 0.5)
    for name in never:
        flips = []
        for seed in range(12):
            unflipped = _item(never[name], 1, seed)
            assert not torch.equal(unflipped, unflipped.flip(-1)), name  # the test images are not symmetric
            # Same crop (drawn before the flip), mirrored: with 1 every time.
            assert torch.equal(_item(always[name], 1, seed), unflipped.flip(-1)), name
            flips.append(torch.equal(_item(half[name], 1, seed), unflipped.flip(-1)))
        assert 0 < sum(flips) < len(flips), name
        transform = getattr(never[name], "transform", None)
        if transform is not None:  # 0: no flip in the pipeline at all
            assert not [t for t in transform.transforms if "Flip" in type(t).__name__], name
    # With 0 the fake images are exactly the generated ones.
    fake = never["fake"]
    torch.manual_seed(0)
    noise = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(2 * 1 + 0))
    assert torch.equal(_item(fake, 1, 5), fake.class_means[1] + noise)


def test_hflip_must_be_a_probability():
    with pytest.raises(ConfigError, match="hflip"):
        build_datasets("fake", None, hflip=1.5)


# ---- unreadable images ---------------------------------------------------------------------------------------------

def test_unreadable_image_is_a_config_error_naming_it_also_from_a_loader_worker(tmp_path):
    write_imagefolder(tmp_path, classes=("a", "b"), n_per_class=(2, 1), size=16)
    bad = tmp_path / "val" / "b" / "0001.png"
    bad.write_bytes(b"")
    _, val, _ = build_datasets("imagefolder", tmp_path, input_size=16)
    with pytest.raises(ConfigError, match=f"cannot read image {bad}"):
        val[1]
    loader = torch.utils.data.DataLoader(val, batch_size=1, num_workers=1)
    with pytest.raises(ConfigError) as caught:
        list(loader)
    message = str(caught.value)
    assert message.startswith(f"cannot read image {bad}") and "\n" not in message and "Traceback" not in message
