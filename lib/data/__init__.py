"""Datasets by name and their loaders.

    train_set, val_set, info = build_datasets("cifar10", "data")
    train_loader, val_loader, train_sampler = build_loaders(train_set, val_set, 128, workers=4, seed=67)
    for epoch in range(start_epoch, epochs):
        train_sampler.set_epoch(epoch)   # order and augmentation are a function of (seed, epoch): resumes are exact
        ...
"""
import atexit
import multiprocessing
import multiprocessing.util  # registers multiprocessing's exit hook now, so that ours (below) runs before it
import os
import signal

import cv2
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from lib.data.cifar import CifarDataset, build_cifar
from lib.data.fake import FakeDataset, build_fake
from lib.data.folders import ListFileDataset, build_imagefolder, build_imagenet, read_list_file
from lib.data.info import DatasetInfo
from lib.data.samplers import ContiguousShardSampler, EpochShuffleSampler, SeededAugmentation
from lib.errors import ConfigError

# OpenCV's own thread pool, once started, is copied into every forked DataLoader worker without its threads: a
# worker that then touches the pool (even cv2.setNumThreads) can wait forever on a lock a missing thread held.
# The loaders' OpenCV work (video decoding runs in FFmpeg's threads; crops, flips, resizes of one sample) gains
# little from the pool; with one thread OpenCV starts none, so forks are safe. Every lib.data module passes here.
cv2.setNumThreads(1)

# name -> builder(name, data_dir, input_size, download, **options) -> (train_set, val_set, DatasetInfo)
DATASETS = {
    "cifar10": build_cifar,
    "cifar100": build_cifar,
    "imagenet": build_imagenet,
    "imagefolder": build_imagefolder,
    "fake": build_fake,
}
# A loader worker that delivers no batch for this long is taken as hung: the run stops with one line instead of
# waiting forever (DataLoader's own default).
LOADER_TIMEOUT_SECONDS = 600
STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")


def shield_worker(worker_id):
    """worker_init_fn of every loader: a worker ignores the stop signals (a cluster sends them to every process of a
    job, Ctrl-C to the terminal's process group). They are for the training process, which checkpoints and then
    ends its workers; a worker that died of one first would stop the run as a failure."""
    for name in STOP_SIGNALS:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


def stop_loader_workers():
    """At exit, SIGKILL this process's daemonic children: its data-loader workers. A worker ignores SIGTERM
    (shield_worker), and multiprocessing's own exit hook ends daemonic children with SIGTERM and then joins them,
    so an exit with a live loader (after an error or a traceback) would wait forever. Runs before that hook."""
    workers = [p for p in multiprocessing.active_children() if p.daemon]
    if not workers:
        return
    if hasattr(signal, "SIGCHLD"):  # the loader's SIGCHLD handler would report the kill as a failed worker
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for worker in workers:
        worker.kill()
    for worker in workers:
        worker.join(timeout=5)


atexit.register(stop_loader_workers)

__all__ = ["DATASETS", "DatasetInfo", "build_datasets", "build_loaders", "loader_options", "CifarDataset",
           "FakeDataset", "ListFileDataset", "read_list_file", "EpochShuffleSampler", "SeededAugmentation",
           "ContiguousShardSampler"]


def build_datasets(name, data_dir, input_size=None, download=True, hflip=None, **options):
    """(train_set, val_set, info) for dataset `name` stored under data_dir.

    input_size None takes the dataset's default (32 for cifar*/fake, 224 for imagenet/imagefolder). download only
    matters for CIFAR. hflip: probability of flipping a training image horizontally (None: the builder's default,
    0.5 as the reference, 0 for fake data). options go to the builder (fake: num_train, num_val, num_classes).
    """
    if hflip is not None:
        if not 0 <= hflip <= 1:
            raise ConfigError(f"hflip is a probability in [0, 1], got {hflip}")
        options["hflip"] = hflip
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset '{name}': choose one of {', '.join(sorted(DATASETS))}")
    if input_size is not None and input_size < 1:
        raise ConfigError(f"input_size must be positive, got {input_size}")
    data_dir = os.fspath(data_dir) if data_dir is not None else ""
    if name not in ("fake", "cifar10", "cifar100") and not os.path.isdir(data_dir or "."):
        raise ConfigError(f"data directory {data_dir} does not exist")
    return DATASETS[name](name, data_dir, input_size, download, **options)


def loader_options(workers, device, seed):
    """The DataLoader options every loader of a run shares: its workers ignore the stop signals (shield_worker) and
    persist across epochs, a hung one is noticed (LOADER_TIMEOUT_SECONDS), memory is pinned only for a CUDA run (on
    a GPU host a CPU run would otherwise start a CUDA context on GPU 0), and the workers' base seed comes from an own
    generator, never the global RNG (which then stays as a resumed checkpoint restored it)."""
    return dict(num_workers=workers, pin_memory=device is not None and torch.device(device).type == "cuda",
                persistent_workers=workers > 0, timeout=LOADER_TIMEOUT_SECONDS if workers > 0 else 0,
                worker_init_fn=shield_worker, generator=torch.Generator().manual_seed(seed))


def build_loaders(train_set, val_set, batch_size, workers, distributed=False, seed=0, device=None):
    """(train_loader, val_loader, train_sampler); batch_size is per process; memory is pinned only for a CUDA
    `device` (the run's).

    Training: EpochShuffleSampler (call train_sampler.set_epoch(epoch) every epoch), last partial batch kept as in
    the reference. Validation: in order; with distributed=True each rank gets a contiguous shard without padding,
    so the ranks' results must be summed. Neither loader draws from the global RNG.
    """
    if batch_size < 1 or workers < 0 or seed < 0:
        raise ConfigError(f"need batch_size >= 1, workers >= 0, seed >= 0; got {batch_size}, {workers}, {seed}")
    if distributed:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("build_loaders(distributed=True) needs torch.distributed to be initialized first")
        num_replicas, rank = dist.get_world_size(), dist.get_rank()
    else:
        num_replicas, rank = 1, 0
    train_sampler = EpochShuffleSampler(train_set, num_replicas, rank, seed=seed)
    val_sampler = ContiguousShardSampler(val_set, num_replicas, rank)
    train_loader = DataLoader(SeededAugmentation(train_set), batch_size=batch_size, sampler=train_sampler,
                              drop_last=False, **loader_options(workers, device, seed))
    val_loader = DataLoader(val_set, batch_size=batch_size, sampler=val_sampler,
                            **loader_options(workers, device, seed))
    return train_loader, val_loader, train_sampler
