"""The re-ID datasets by name: image sets (lib/data/reid.py) and video sets (lib/data/reid_video.py).

    train_set, query_set, gallery_set, info = build_reid_datasets("market1501", "data")
"""
import os
from typing import List, Sequence

from lib.data.reid import (
    DEFAULT_ERASING,
    DEFAULT_HFLIP,
    DEFAULT_PAD,
    DEFAULT_SIZE,
    IMAGE_READERS,
    ReidDatasetInfo,
    ReidImageDataset,
    fake_read,
    read_image,
    reid_transforms,
    relabel,
)
from lib.data.reid_video import VIDEO_READERS, ReidVideoDataset, fake_read_video
from lib.errors import ConfigError


def reid_dataset_names() -> List[str]:
    return sorted(IMAGE_READERS) + sorted(VIDEO_READERS)


def build_reid_datasets(name: str, data_dir, img_size: Sequence[int] = DEFAULT_SIZE, hflip: float = DEFAULT_HFLIP,
                        pad: int = DEFAULT_PAD, erasing: float = DEFAULT_ERASING, seq_len: int = 4,
                        test_sampling: str = "dense", split: int = 0, **options):
    """(train_set, query_set, gallery_set, ReidDatasetInfo) for re-ID dataset `name` under data_dir.

    Image sets (market1501, dukemtmcreid, msmt17, reidfolder, fake) give ReidImageDataset items (image, pid,
    camid); video sets (mars, ilidsvid, prid2011, fakevideo) ReidVideoDataset items (clip, pid, camid), with
    seq_len frames per clip and test_sampling 'dense' (every frame, consecutive clips) or 'evenly' (seq_len frames).
    split: iLIDS-VID / PRID-2011's split 0..9. hflip / pad / erasing: the training augmentation (BoT defaults).
    options go to the reader (fake / fakevideo: num_ids, num_test_ids, per_id; prid2011: min_frames).
    Training pids are relabelled 0..num_classes-1; query / gallery keep the released pids.
    """
    if name not in IMAGE_READERS and name not in VIDEO_READERS:
        raise ConfigError(f"unknown re-ID dataset {name!r}: choose one of {', '.join(reid_dataset_names())}")
    data_dir = os.fspath(data_dir) if data_dir is not None else ""
    if not name.startswith("fake") and not os.path.isdir(data_dir or "."):
        raise ConfigError(f"data directory {data_dir} does not exist")
    train_tf, test_tf = reid_transforms(img_size, hflip, pad, erasing)
    video = name in VIDEO_READERS
    if video:
        splits, num_splits = VIDEO_READERS[name](data_dir, split=split, **options)
    else:
        splits, num_splits = IMAGE_READERS[name](data_dir, **options), 1
    train, num_classes = relabel(splits.train)
    if num_classes < 2 or not splits.query or not splits.gallery:
        raise ConfigError(f"{name} under {data_dir or '.'}: need at least 2 training identities and non-empty "
                          f"query and gallery sets; found {num_classes} identities, {len(splits.query)} query and "
                          f"{len(splits.gallery)} gallery items")
    if video:
        read = fake_read_video if name == "fakevideo" else read_image
        sets = (ReidVideoDataset(train, train_tf, seq_len, "train", read=read),
                ReidVideoDataset(splits.query, test_tf, seq_len, test_sampling, read=read),
                ReidVideoDataset(splits.gallery, test_tf, seq_len, test_sampling, read=read))
    else:
        read = fake_read if name == "fake" else read_image
        sets = tuple(ReidImageDataset(s, tf, read) for s, tf in ((train, train_tf), (splits.query, test_tf),
                                                                 (splits.gallery, test_tf)))
    info = ReidDatasetInfo(name, num_classes, int(img_size[0]), False, img_size=tuple(img_size), video=video,
                           seq_len=seq_len if video else 1, test_sampling=test_sampling if video else "",
                           split=split, num_splits=num_splits, num_train=len(train), num_query=len(splits.query),
                           num_gallery=len(splits.gallery), num_query_ids=len({p for _, p, _ in splits.query}),
                           num_gallery_ids=len({p for _, p, _ in splits.gallery}))
    return (*sets, info)
