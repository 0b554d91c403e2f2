"""Video re-ID sets: MARS, iLIDS-VID, PRID-2011 (and generated tracklets), read as released (docs/reid.md).

A tracklet is a tuple of frame paths sorted numerically (frame 10 after frame 9; the released codes of Gao &
Nevatia and others glob them unsorted). Clips (Gao & Nevatia 2018, "Revisiting Temporal Modeling for Video-based
Person ReID"):
    train:  seq_len consecutive frames from a uniformly drawn start; a shorter tracklet is loop-padded
            (frames 0, 1, 2, 0 for 3 frames and seq_len 4): (T, 3, H, W);
    dense:  every frame, cut into consecutive clips of seq_len, the last one loop-padded from the tracklet's
            start: (num_clips, T, 3, H, W); the model's features of the clips are then averaged;
    evenly: seq_len frames evenly spaced over the tracklet: (1, T, 3, H, W).
All frames of a clip share one draw of the augmentation (flip, crop, erasing).
"""
import json
import os
import re
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from lib.data.reid import Sample, Splits, fake_read, find_root, image_files, read_image
from lib.errors import ConfigError

TEST_SAMPLINGS = ("dense", "evenly")
NUM_SPLITS = 10
# The fallback splits (no split file found) are permutations drawn from this seed and the split number.
FALLBACK_SPLIT_SEED = 2014
# PRID-2011: Wang et al. (ECCV 2014) keep the persons whose sequences in both cameras have more than 21 frames (178).
PRID_MIN_FRAMES = 22
_DIGITS = re.compile(r"(\d+)")


def frame_number(name: str) -> Tuple[int, str]:
    """Sort key: the last number in the file name (then the name): 'cam1_person001_00317.png' -> 317."""
    numbers = _DIGITS.findall(os.path.splitext(os.path.basename(name))[0])
    return (int(numbers[-1]) if numbers else -1, name)


def sequence_frames(folder: str) -> Tuple[str, ...]:
    frames = sorted(image_files(folder), key=frame_number)
    if not frames:
        raise ConfigError(f"no frames in sequence folder {folder}")
    return tuple(os.path.join(folder, f) for f in frames)


class ReidVideoDataset(Dataset):
    """Items (clip, pid, camid) of tracklets [(frame paths, pid, camid)]; mode 'train', 'dense' or 'evenly'."""

    def __init__(self, samples: List[Sample], transform, seq_len: int, mode: str, read: Callable = read_image):
        if mode not in ("train",) + TEST_SAMPLINGS:
            raise ConfigError(f"unknown test sampling {mode!r}: choose one of {', '.join(TEST_SAMPLINGS)}")
        if seq_len < 1:
            raise ConfigError(f"seq_len must be positive, got {seq_len}")
        self.samples, self.transform, self.seq_len, self.mode, self.read = samples, transform, seq_len, mode, read
        self.pids = [pid for _, pid, _ in samples]
        self.camids = [cam for _, _, cam in samples]

    def __len__(self):
        return len(self.samples)

    def frame_indices(self, count: int) -> np.ndarray:
        """(num_clips, seq_len) frame indices of a tracklet of `count` frames; 'train' draws from torch's RNG."""
        t = self.seq_len
        if self.mode == "train":  # a window inside the tracklet, or the whole tracklet looped
            start = int(torch.randint(count - t + 1, ()).item()) if count > t else 0
            return ((start + np.arange(t)) % count)[None]
        if self.mode == "evenly":
            return np.linspace(0, count - 1, t).round().astype(int)[None]
        padded = -(-count // t) * t
        return (np.arange(padded) % count).reshape(-1, t)

    def __getitem__(self, index):
        frames, pid, camid = self.samples[index]
        indices = self.frame_indices(len(frames))
        needed = np.unique(indices)
        loaded = {i: self.transform.resize(self.read(frames[i])) for i in needed}
        clip = torch.stack([loaded[i] for i in indices.reshape(-1)]).reshape(*indices.shape, *loaded[needed[0]].shape)
        clip = self.transform.after_resize(clip)
        return (clip[0] if self.mode == "train" else clip), pid, camid


def fake_read_video(key) -> torch.Tensor:
    return fake_read(key)


def read_fakevideo(data_dir=None, split=0, num_ids=8, num_test_ids=4, per_id=2, **unused):
    """Generated tracklets of 3 to 7 frames: per_id per training identity over 2 cameras; one query tracklet
    (camera 0) and per_id gallery tracklets (camera 1) per test identity."""
    def tracklet(pid, n):
        return tuple(("fake", pid, 10_000 * pid + 100 * n + f) for f in range(3 + (pid + n) % 5))
    train = [(tracklet(pid, i), pid, i % 2) for pid in range(1, num_ids + 1) for i in range(per_id)]
    test_ids = range(num_ids + 1, num_ids + 1 + num_test_ids)
    query = [(tracklet(pid, 99), pid, 0) for pid in test_ids]
    gallery = [(tracklet(pid, i), pid, 1) for pid in test_ids for i in range(per_id)]
    return Splits(train, query, gallery), 1


# --------------------------------------------------------------------------------------------------- MARS
def _loadmat(path: str, key: str) -> np.ndarray:
    from scipy.io import loadmat
    if not os.path.isfile(path):
        raise ConfigError(f"mars: missing {path}")
    try:
        return np.asarray(loadmat(path)[key])
    except Exception as error:  # scipy raises several types for a damaged / foreign file
        raise ConfigError(f"mars: cannot read {key!r} from {path}: {error}") from None


def _read_names(path: str) -> List[str]:
    if not os.path.isfile(path):
        raise ConfigError(f"mars: missing {path}")
    with open(path) as handle:
        return [line.strip() for line in handle if line.strip()]


def _mars_tracks(root: str, part: str, names: List[str], info: np.ndarray, rows) -> List[Sample]:
    """Tracklets of info's rows [start, end (1-based, inclusive, into names), pid, camera]; pid -1 skipped."""
    tracks = []
    for row in rows:
        start, end, pid, camera = (int(v) for v in info[row, :4])
        if pid == -1:
            continue
        if not 1 <= start <= end <= len(names):
            raise ConfigError(f"mars: tracklet {row + 1} of {part} spans rows {start}..{end} of a {len(names)}-name "
                              "list")
        frames = tuple(os.path.join(root, part, name[:4], name) for name in names[start - 1:end])
        tracks.append((tuple(sorted(frames, key=frame_number)), pid, camera - 1))
    return tracks


def read_mars(data_dir: str, split=0, **unused):
    """MARS: bbox_train/, bbox_test/ (<pid>/<pid>C<cam>T<track>F<frame>.jpg) and info/ with train_name.txt,
    test_name.txt, tracks_train_info.mat, tracks_test_info.mat ([start, end, pid, camera] per tracklet, 1-based
    rows of the name lists) and query_IDX.mat (1-based test tracklets; the gallery is every other test one)."""
    root = find_root(data_dir, "mars", ("MARS", "mars"), "info", "extract bbox_train.zip, bbox_test.zip and the "
                     "info folder of MARS-evaluation there")
    info_dir = os.path.join(root, "info")
    train_info = _loadmat(os.path.join(info_dir, "tracks_train_info.mat"), "track_train_info")
    test_info = _loadmat(os.path.join(info_dir, "tracks_test_info.mat"), "track_test_info")
    query_rows = _loadmat(os.path.join(info_dir, "query_IDX.mat"), "query_IDX").reshape(-1).astype(int) - 1
    for what, info in (("tracks_train_info", train_info), ("tracks_test_info", test_info)):
        if info.ndim != 2 or info.shape[1] < 4:
            raise ConfigError(f"mars: {what}.mat holds shape {info.shape}, expected (tracklets, 4)")
    if len(query_rows) and not (0 <= query_rows.min() and query_rows.max() < len(test_info)):
        raise ConfigError(f"mars: query_IDX.mat indexes beyond the {len(test_info)} test tracklets")
    train_names = _read_names(os.path.join(info_dir, "train_name.txt"))
    test_names = _read_names(os.path.join(info_dir, "test_name.txt"))
    gallery_rows = np.setdiff1d(np.arange(len(test_info)), query_rows)
    return Splits(_mars_tracks(root, "bbox_train", train_names, train_info, range(len(train_info))),
                  _mars_tracks(root, "bbox_test", test_names, test_info, np.sort(query_rows)),
                  _mars_tracks(root, "bbox_test", test_names, test_info, gallery_rows)), 1


# ---------------------------------------------------------------------------------------- iLIDS-VID, PRID
def _check_split(split, name):
    if isinstance(split, bool) or not isinstance(split, (int, np.integer)) or not 0 <= split < NUM_SPLITS:
        raise ConfigError(f"{name}: split must be an integer 0..{NUM_SPLITS - 1}, got {split!r}")


def _fallback_split(persons: Sequence[str], split: int) -> Tuple[List[str], List[str]]:
    """Documented substitute for a missing split file: a permutation of the sorted persons drawn from
    (FALLBACK_SPLIT_SEED, split); its first half trains, the rest tests. Not the published splits."""
    order = np.random.default_rng([FALLBACK_SPLIT_SEED, split]).permutation(len(persons))
    half = len(persons) // 2
    return sorted(persons[i] for i in order[:half]), sorted(persons[i] for i in order[half:])


def _json_split(path: str, split: int, persons: Sequence[str], name: str) -> Tuple[List[str], List[str]]:
    """A split file in the common JSON form: a list of {"train": [person folders], "test": [...]}."""
    try:
        with open(path) as handle:
            entry = json.load(handle)[split]
        train, test = [os.path.basename(p) for p in entry["train"]], [os.path.basename(p) for p in entry["test"]]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
        raise ConfigError(f"{name}: cannot read split {split} from {path}: {error}") from None
    unknown = sorted(set(train + test) - set(persons))
    if unknown:
        raise ConfigError(f"{name}: split file {path} names persons without sequences in both cameras: "
                          f"{', '.join(unknown[:3])}")
    return sorted(train), sorted(test)


def _two_camera_splits(cam_dirs: Tuple[str, str], train: List[str], test: List[str]) -> Splits:
    """Training: both cameras' tracklets of the training persons; query: camera 0, gallery: camera 1 of the test
    persons; pid = the person's index in the sorted list of all persons with both cameras."""
    persons = sorted(set(train) | set(test))
    pid = {person: i for i, person in enumerate(persons)}

    def tracks(people, cameras):
        return [(sequence_frames(os.path.join(cam_dirs[c], p)), pid[p], c) for p in people for c in cameras]
    return Splits(tracks(train, (0, 1)), tracks(test, (0,)), tracks(test, (1,)))


def _persons(folder: str) -> List[str]:
    return sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))


def _camera_folders(dataset: str, root: str, names: Tuple[str, ...]) -> Tuple[str, ...]:
    """The two-camera sets' camera folders root/name, each required to exist (find_root checked only the root)."""
    cams = tuple(os.path.join(root, name) for name in names)
    for cam in cams:
        if not os.path.isdir(cam):
            raise ConfigError(f"{dataset}: missing {cam}")
    return cams


def read_ilidsvid(data_dir: str, split=0, **unused):
    """i-LIDS-VID/sequences/cam{1,2}/personXXX/*.png; splits from 'train-test people splits/
    train_test_splits_ilidsvid.mat' (ls_set: 10 rows of 300 1-based indices into the sorted person folders; the
    first half of a row tests, the second half trains, as Wang et al. ECCV 2014 and the common readers use it) or
    splits_ilidsvid.json; without either a documented fallback split."""
    _check_split(split, "ilidsvid")
    base = find_root(data_dir, "ilidsvid", ("ilidsvid", "iLIDS-VID"), os.path.join("i-LIDS-VID", "sequences"),
                     "extract iLIDS-VID.tar there")
    cams = _camera_folders("ilidsvid", os.path.join(base, "i-LIDS-VID", "sequences"), ("cam1", "cam2"))
    persons = sorted(set(_persons(cams[0])) & set(_persons(cams[1])))
    mat = os.path.join(base, "train-test people splits", "train_test_splits_ilidsvid.mat")
    json_path = os.path.join(base, "splits_ilidsvid.json")
    if os.path.isfile(mat):
        from scipy.io import loadmat
        try:
            rows = np.asarray(loadmat(mat)["ls_set"]).astype(int)
        except Exception as error:
            raise ConfigError(f"ilidsvid: cannot read ls_set from {mat}: {error}") from None
        all_persons = _persons(cams[0])
        if rows.shape[0] != NUM_SPLITS or rows.max() > len(all_persons) or rows.min() < 1:
            raise ConfigError(f"ilidsvid: {mat} holds a {rows.shape} ls_set that does not index the "
                              f"{len(all_persons)} person folders of cam1 in {NUM_SPLITS} rows")
        half = rows.shape[1] // 2
        test = sorted(all_persons[i - 1] for i in rows[split, :half])
        train = sorted(all_persons[i - 1] for i in rows[split, half:])
    elif os.path.isfile(json_path):
        train, test = _json_split(json_path, split, persons, "ilidsvid")
    else:
        train, test = _fallback_split(persons, split)
    return _two_camera_splits(cams, train, test), NUM_SPLITS


def read_prid2011(data_dir: str, split=0, min_frames=PRID_MIN_FRAMES, **unused):
    """prid_2011/multi_shot/{cam_a,cam_b}/person_XXXX/*.png; splits from splits_prid2011.json (beside prid_2011/
    or inside it) or, without it, the fallback split over the persons seen by both cameras with at least
    min_frames frames in each (22: Wang et al.'s 178 persons)."""
    _check_split(split, "prid2011")
    base = find_root(data_dir, "prid2011", ("prid2011", "PRID2011"), os.path.join("prid_2011", "multi_shot"),
                     "extract prid_2011.zip there")
    cams = _camera_folders("prid2011", os.path.join(base, "prid_2011", "multi_shot"), ("cam_a", "cam_b"))
    both = sorted(set(_persons(cams[0])) & set(_persons(cams[1])))
    json_paths = [os.path.join(base, "splits_prid2011.json"), os.path.join(base, "prid_2011", "splits_prid2011.json")]
    found = [p for p in json_paths if os.path.isfile(p)]
    if found:
        train, test = _json_split(found[0], split, both, "prid2011")
    else:
        long_enough = [p for p in both if all(len(image_files(os.path.join(c, p))) >= min_frames for c in cams)]
        train, test = _fallback_split(long_enough, split)
    return _two_camera_splits(cams, train, test), NUM_SPLITS


VIDEO_READERS: Dict[str, Callable] = {"mars": read_mars, "ilidsvid": read_ilidsvid, "prid2011": read_prid2011,
                                      "fakevideo": read_fakevideo}
