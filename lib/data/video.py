"""Video datasets for action recognition: UCF-101, HMDB-51, Kinetics / any class-per-folder video tree, and fake.

    from lib.data.video import build_video_datasets, video_scores
    train_set, val_set, test_set, info = build_video_datasets("ucf101", "data", split=1)
    clip, label = train_set[i]     # (3, clip_len, frame_size, frame_size) float32, int: random crop + flip
    clip, label = val_set[i]       # the centre clip, centre crop: deterministic (clip accuracy)
    clips, label = test_set[i]     # (test_clips, 3, clip_len, S, S): evenly spaced clips (video accuracy)
    probabilities = video_scores(model(clips))   # softmax averaged over the clips -> (num_classes,)

build_video_datasets(name, data_dir, split=1, clip_len=16, frame_step=1, frame_size=112, hflip=0.5, test_clips=10,
validation='holdout', train_crop='corner', crop_scales=CROP_SCALES, min_frame_size=None, **options) ->
(train_set, val_set, test_set, info); name is one of ucf101, hmdb51, kinetics, videofolder, fake.
Options: normalization ('kinetics', default: (x - mean) / std with Kinetics statistics, as 3D-ResNets' current
version; 'activitynet': x - ActivityNet mean on 0-255 pixels, the input of its 2017 Kinetics checkpoints
resnet-*-kinetics.pth; see lib/data/video_transforms.py), use_frames (None, default: frame folders when their root
exists; False: the videos; True: frame folders, an error without them), and for fake: num_train, num_val,
num_classes, frames. info is a VideoDatasetInfo (a DatasetInfo with the class names, counts, clip options, where
frames come from and which validation set was made).

Layouts (docs/video_data.md), under data_dir:
    ucf101:      UCF-101/<Class>/v_<Class>_gXX_cYY.avi and ucfTrainTestlist/{classInd.txt, trainlist0{1,2,3}.txt,
                 testlist0{1,2,3}.txt}; train = trainlist0<split>, test = testlist0<split>.
    hmdb51:      hmdb51/<class>/<video>.avi and testTrainMulti_7030_splits/<class>_test_split<split>.txt (lines
                 "<video>.avi 1|2|0": 1 train, 2 test, 0 in neither).
    kinetics, videofolder: train/<class>/<video>.{mp4,avi,mkv,webm,...} and val/<class>/...; test = val/.
    Frame folders (3D-ResNets' form: <video>/image_00001.jpg, ...) are read instead of the videos when the frame
    root exists: the video root with "_jpg" appended, mirroring its tree with one folder per video named as the
    video without its extension (UCF-101_jpg/<Class>/v_..._c01/, hmdb51_jpg/<class>/<video>/, train_jpg/<class>/
    <video>/, val_jpg/...).
Validation (val_set: the per-epoch centre clips a best epoch is chosen on) never uses the test videos by default
(UCF-101 and HMDB-51 publish no validation split; Kinetics' val/ is where results are reported, so it is the test
set here): validation='holdout' takes ucf101's three highest-numbered training groups of the split (whole groups: a
group's clips share actors and scenes), hmdb51's videos marked 0, every 50th training video of each kinetics /
videofolder class, each removed from train_set (hmdb51's is unchanged); validation='test' validates on the test
split, as the 3D-ResNets framework did. test_set is the test split (val/ for kinetics / videofolder) either way.

Training items draw every random choice from torch's default CPU generator (lib/data/video_transforms.py), so
through lib.data.samplers (EpochShuffleSampler + SeededAugmentation) a clip is a function of (seed, epoch, index).
Unreadable videos raise a one-line ConfigError naming the file, also from DataLoader workers. Checked when the
datasets are built, each a one-line ConfigError: split files naming missing videos, classes without training
videos, frame folders without frames or with gaps. For the entry point's log: source_line(info) (videos or frame
folders, and how many) and short_video_warning(train_set) (videos shorter than a clip's span, loop-padded).
"""
import os
import re
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from torch.utils.data import Dataset

from lib.data.info import DatasetInfo
from lib.data.video_reader import VIDEO_EXTENSIONS, VideoFileReader, frame_folder_count, read_clip_frames
from lib.data.video_transforms import (
    CROP_SCALES,
    DEFAULT_NORMALIZATION,
    NORMALIZATIONS,
    EvalClips,
    TrainClip,
    check_clip_options,
    check_train_crop,
    clip_span,
    video_scores,
)
from lib.errors import ConfigError

__all__ = ["build_video_datasets", "video_scores", "VideoDatasetInfo", "VideoFileDataset", "FakeVideoDataset",
           "VIDEO_DATASETS", "MIN_FRAME_SIZE", "short_videos", "short_video_warning", "source_line"]

FRAME_ROOT_SUFFIX = "_jpg"
UCF_DOWNLOAD = ("download UCF101.rar and UCF101TrainTestSplits-RecognitionTask.zip from "
                "https://www.crcv.ucf.edu/data/UCF101.php and extract both into {dir}, so that {dir}/UCF-101/"
                "<Class>/*.avi and {dir}/ucfTrainTestlist/ exist")
HMDB_DOWNLOAD = ("download hmdb51_org.rar and test_train_splits.rar from https://serre-lab.clps.brown.edu/resource/"
                 "hmdb-a-large-human-motion-database/ and extract them into {dir}, so that {dir}/hmdb51/<class>/"
                 "*.avi (each class's own .rar extracted there) and {dir}/testTrainMulti_7030_splits/ exist")
FOLDER_HINT = ("put the videos in {dir}/train/<class>/*.mp4 and {dir}/val/<class>/*.mp4 (Kinetics: run "
               "github.com/cvdfoundation/kinetics-dataset's download, extract and arrange_by_classes.py scripts "
               "and pass their videos/ folder)")


@dataclass(frozen=True)
class VideoDatasetInfo(DatasetInfo):
    """DatasetInfo plus: classes (names, index order), num_train / num_val / num_test (videos), clip options,
    split (1-3 for ucf101 / hmdb51), source ('videos', 'frames' or 'generated') and source_root (the training
    videos' or frame folders' root), the normalization name, validation ('holdout' or 'test', as asked), val_from
    (what the validation videos are, in words) and train_crop (the training crop's kind)."""
    classes: tuple = ()
    num_train: int = 0
    num_val: int = 0
    num_test: int = 0
    clip_len: int = 16
    frame_step: int = 1
    test_clips: int = 10
    split: int = 1
    source: str = "videos"
    normalization: str = DEFAULT_NORMALIZATION
    validation: str = "holdout"
    val_from: str = ""
    source_root: str = ""
    train_crop: str = "corner"


class _ClipDataset(Dataset):
    """Clips of videos through a TrainClip (mode 'train') or EvalClips (modes 'val', 'test') transform.
    Subclasses define __len__, label(index) and frames(index, choose_indices) -> uint8 (..., H, W, 3)."""

    def __init__(self, transform, mode):
        self.transform = transform
        self.mode = mode

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} videos")
        if self.mode == "train":
            u, scale, position, flip = self.transform.draw()  # all draws first: see video_transforms
            frames = self.frames(index, lambda num_frames: self.transform.indices(num_frames, u))
            return self.transform.pixels(frames, scale, position, flip), self.label(index)
        return self.transform.pixels(self.frames(index, self.transform.indices)), self.label(index)


class VideoFileDataset(_ClipDataset):
    """Videos (files, or frame folders) given as samples [(path, label)]; targets = the labels."""

    def __init__(self, samples, classes, transform, mode, frame_counts=None):
        super().__init__(transform, mode)
        self.samples = samples
        self.classes = classes
        self.targets = [label for _, label in samples]
        self.true_counts = {}  # path -> frames that really decode, where the container's count was wrong
        self.frame_counts = frame_counts or {}  # path -> frames, known without decoding (frame folders)

    def __len__(self):
        return len(self.samples)

    def label(self, index):
        return self.samples[index][1]

    def frames(self, index, choose_indices):
        return read_clip_frames(self.samples[index][0], choose_indices, self.true_counts)


class FakeVideoDataset(_ClipDataset):
    """Generated videos (no files), through the same clip transforms as real ones; labels index % num_classes.

    Video i of a split is drawn from its own seed when asked for (no memory, identical in every process). Class c
    is a square of its own colour moving vertically at 1 + c % 3 pixels per frame (downwards for even c // 3,
    upwards for odd) over noise tinted with half that colour: learnable from colour and motion. Nothing depends on
    left/right, so horizontal flips keep the label right.
    """

    def __init__(self, num_samples, num_classes, num_frames, height, width, split_index, transform, mode):
        super().__init__(transform, mode)
        self.num_samples, self.num_classes, self.num_frames = num_samples, num_classes, num_frames
        self.height, self.width, self.split_index = height, width, split_index
        self.palette = np.random.default_rng(1234).integers(40, 216, size=(num_classes, 3)).astype(np.int16)
        self.targets = [i % num_classes for i in range(num_samples)]

    def __len__(self):
        return self.num_samples

    def label(self, index):
        return index % self.num_classes

    def video(self, index):
        """uint8 (num_frames, height, width, 3) of video `index`."""
        label = self.label(index)
        rng = np.random.default_rng([index, self.split_index])
        # noise over a dim version of the class colour, so that any crop, even one missing the square, shows it
        frames = rng.integers(0, 80, size=(self.num_frames, self.height, self.width, 3), dtype=np.int16)
        frames += self.palette[label] // 2
        side = max(2, min(self.height, self.width) // 4)
        speed = (1 + label % 3) * (1 if (label // 3) % 2 == 0 else -1)
        top0, left = rng.integers(0, self.height), rng.integers(0, self.width - side + 1)
        for t in range(self.num_frames):
            rows = (top0 + speed * t + np.arange(side)) % self.height
            frames[t, rows, left:left + side] = self.palette[label]
        return frames.astype(np.uint8)

    def frames(self, index, choose_indices):
        indices = np.asarray(choose_indices(self.num_frames))
        return self.video(index)[indices]


# ---- layouts ---------------------------------------------------------------------------------------------------

def _read_lines(path, what):
    try:
        with open(path, "r", encoding="utf-8") as f:
            return [(n, line.split()) for n, line in enumerate(f, 1) if line.strip()]
    except OSError as error:
        raise ConfigError(f"cannot read {what} {path}: {error.strerror or error}") from None


def _frame_root(video_root, use_frames=None):
    """The frame-folder root beside video_root when frames are to be read instead of the videos, else None.

    use_frames None: when that root exists; False: never; True: always (a ConfigError if it does not exist)."""
    root = video_root.rstrip(os.sep) + FRAME_ROOT_SUFFIX
    if use_frames and not os.path.isdir(root):
        raise ConfigError(f"frame folders asked for, but {root} does not exist (tools/extract_frames.py makes it)")
    return root if use_frames is not False and os.path.isdir(root) else None


def _sample_path(video_root, frame_root, relative):
    """Where the video (or, with a frame root, its frame folder) named `relative` to the video root is."""
    if frame_root is None:
        return os.path.join(video_root, relative)
    return os.path.join(frame_root, os.path.splitext(relative)[0])


SHOWN = 3  # problems named in full in one line; the rest are counted


def _some(items):
    """The first SHOWN items joined, and how many more there are, for a one-line message."""
    more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return "; ".join(items[:SHOWN]) + more


def _check_listed(samples, origins, what):
    """Every video (or frame folder) a split file names exists, checked now (one stat each) rather than when an
    epoch first reads it. origins[i] = (list file, line) of samples[i]."""
    missing = [f"{file}:{line}: {path}" for (path, _), (file, line) in zip(samples, origins)
               if not os.path.exists(path)]
    if len(missing) == 1:
        raise ConfigError(f"{missing[0]} does not exist (the split file names a {what} that is not there)")
    if missing:
        raise ConfigError(f"{len(missing)} of the {len(samples)} {what}s the split files name do not exist, e.g. "
                          f"{_some(missing)} (is --data-dir right? otherwise restore them or remove their lines)")


def _check_classes(classes, train, where):
    """A class without training videos cannot be learnt but would still take an output: an error, naming it."""
    empty = sorted(set(range(len(classes))) - {label for _, label in train})
    if empty:
        names = [classes[label] for label in empty]
        raise ConfigError(f"{len(empty)} class(es) have no training videos in {where}: {_some(names)} (restore "
                          f"their videos or remove the class)")


def _frame_counts(samples):
    """path -> frame count of every frame folder in samples, from one listing each (no image opened): gaps and
    empty folders are reported now, not when a clip reaches them."""
    counts, problems = {}, []
    for path, _ in samples:
        if path in counts:
            continue
        try:
            counts[path] = frame_folder_count(path, os.listdir(path))[0]
        except (ConfigError, OSError) as error:
            problems.append(str(error) if isinstance(error, ConfigError) else
                            f"cannot read frame folder {path}: {error.strerror or error}")
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{len(problems)} frame folders are broken, e.g. {_some(problems)}")
    return counts


class VideoSplit(NamedTuple):
    """What a layout reader finds: class names, [(path, label)] of the training and test videos, whether paths are
    frame folders, (HMDB-51) the videos the split uses for neither, and the training videos' root."""
    classes: list
    train: list
    test: list
    frames: bool
    unused: list = ()
    root: str = ""


def ucf101_samples(data_dir, split, use_frames=None):
    """VideoSplit of UCF-101's official split `split` (1, 2 or 3)."""
    video_root = os.path.join(data_dir, "UCF-101")
    lists = os.path.join(data_dir, "ucfTrainTestlist")
    frame_root = _frame_root(video_root, use_frames)
    if not os.path.isdir(lists) or not (os.path.isdir(video_root) or frame_root):
        raise ConfigError(f"UCF-101 not found in {data_dir}: " + UCF_DOWNLOAD.format(dir=data_dir))
    classes = []
    class_ind = os.path.join(lists, "classInd.txt")
    for line_no, fields in _read_lines(class_ind, "UCF-101 class list"):
        if len(fields) != 2 or fields[0] != str(len(classes) + 1):
            raise ConfigError(f"{class_ind}:{line_no}: expected '<index from 1> <Class>' in order, got "
                              f"{' '.join(fields)!r}")
        classes.append(fields[1])
    # Matched without case: the official lists write HandstandPushups as the folder and HandStandPushups in names.
    class_index = {name.lower(): i for i, name in enumerate(classes)}

    def read(kind):
        list_file = os.path.join(lists, f"{kind}list0{split}.txt")
        samples, origins = [], []
        for line_no, fields in _read_lines(list_file, "UCF-101 split file"):
            relative = fields[0]
            folder = relative.replace("\\", "/").split("/")[0].lower()
            if folder not in class_index or len(fields) > 2:
                raise ConfigError(f"{list_file}:{line_no}: expected '<Class>/<video>.avi' with a class of "
                                  f"{class_ind}, got {' '.join(fields)!r}")
            label = class_index[folder]
            if len(fields) == 2 and fields[1] != str(label + 1):
                raise ConfigError(f"{list_file}:{line_no}: label {fields[1]} disagrees with {class_ind}, "
                                  f"where {classes[label]} is {label + 1}")
            samples.append((_sample_path(video_root, frame_root, relative), label))
            origins.append((list_file, line_no))
        if not samples:
            raise ConfigError(f"{list_file} lists no videos")
        _check_listed(samples, origins, "frame folder" if frame_root else "video")
        return samples

    train = read("train")
    # Every official UCF-101 class has videos in every split's training list: an empty one is a damaged list.
    _check_classes(classes, train, f"{os.path.join(lists, f'trainlist0{split}.txt')} (classes of {class_ind})")
    return VideoSplit(classes, train, read("test"), frame_root is not None, root=frame_root or video_root)


def hmdb51_samples(data_dir, split, use_frames=None):
    """VideoSplit of HMDB-51's split `split`: videos marked 1 train, 2 test, 0 unused."""
    video_root = os.path.join(data_dir, "hmdb51")
    lists = os.path.join(data_dir, "testTrainMulti_7030_splits")
    frame_root = _frame_root(video_root, use_frames)
    if not os.path.isdir(lists) or not (os.path.isdir(video_root) or frame_root):
        raise ConfigError(f"HMDB-51 not found in {data_dir}: " + HMDB_DOWNLOAD.format(dir=data_dir))
    suffix = f"_test_split{split}.txt"
    classes = sorted(name[:-len(suffix)] for name in os.listdir(lists) if name.endswith(suffix))
    if not classes:
        raise ConfigError(f"{lists} holds no <class>{suffix} files: " + HMDB_DOWNLOAD.format(dir=data_dir))
    train, test, unused, origins = [], [], [], {}
    for label, name in enumerate(classes):
        list_file = os.path.join(lists, name + suffix)
        for line_no, fields in _read_lines(list_file, "HMDB-51 split file"):
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise ConfigError(f"{list_file}:{line_no}: expected '<video>.avi 0|1|2', got {' '.join(fields)!r}")
            sample = (_sample_path(video_root, frame_root, os.path.join(name, fields[0])), label)
            {"1": train, "2": test, "0": unused}[fields[1]].append(sample)
            origins[sample[0]] = (list_file, line_no)
    for samples, kind in ((train, "training (1)"), (test, "test (2)")):
        if not samples:
            raise ConfigError(f"the {suffix[1:]} files in {lists} mark no {kind} videos")
    every = train + test + list(unused)
    _check_listed(every, [origins[path] for path, _ in every], "frame folder" if frame_root else "video")
    _check_classes(classes, train, f"the {suffix[1:]} files in {lists} (mark 1)")
    return VideoSplit(classes, train, test, frame_root is not None, unused, frame_root or video_root)


def _folder_split(root, classes=None):
    """[(path, label)] of root/<class>/<video file or frame folder>; classes (from train/) fix the labels."""
    try:
        found = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    except OSError as error:
        raise ConfigError(f"cannot read {root}: {error.strerror or error}") from None
    classes = classes or found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ConfigError(f"{root} has classes not in the training set: {', '.join(unknown[:5])}")
    frames = root.endswith(FRAME_ROOT_SUFFIX)
    samples = []
    for label, name in enumerate(classes):
        if name not in found:
            continue
        for entry in sorted(os.scandir(os.path.join(root, name)), key=lambda e: e.name):
            if entry.is_dir() if frames else entry.name.lower().endswith(VIDEO_EXTENSIONS):
                samples.append((entry.path, label))
    if not samples:
        kind = "frame folders" if frames else f"videos ({', '.join(VIDEO_EXTENSIONS)})"
        raise ConfigError(f"{root} holds no {kind} in class folders")
    return classes, samples


def folder_samples(data_dir, split=None, use_frames=None):
    """VideoSplit of data_dir/(train|val)/<class>/* (test = val/; frames from *_jpg when there)."""
    roots = []
    for part in ("train", "val"):
        video_root = os.path.join(data_dir, part)
        roots.append(_frame_root(video_root, use_frames) or video_root)
    if not all(os.path.isdir(root) for root in roots):
        raise ConfigError(f"video folders not found in {data_dir}: " + FOLDER_HINT.format(dir=data_dir))
    classes, train = _folder_split(roots[0])
    _, val = _folder_split(roots[1], classes)
    _check_classes(classes, train, roots[0])  # an empty class folder: a failed download or extraction
    return VideoSplit(classes, train, val, roots[0].endswith(FRAME_ROOT_SUFFIX), root=roots[0])


# ---- validation sets held out of the training data ------------------------------------------------------------
# Each takes the VideoSplit and the split number and returns (train, val, what val is); the training set loses
# what the validation set takes, so that no video is in two sets.

HOLDOUT_GROUPS = 3  # UCF-101: the split's highest-numbered training groups validate
HOLDOUT_EVERY = 50  # kinetics / videofolder: every 50th training video of each class validates
UCF_GROUP = re.compile(r"_g(\d+)_c\d+$")


def ucf101_holdout(found, split):
    """The training videos of the split's HOLDOUT_GROUPS highest-numbered training groups (gXX). The clips of a
    group share actors and scenes, so a group is held out whole: a random pick of videos would validate on the
    people and rooms it trains on."""
    groups = []
    for path, _ in found.train:
        match = UCF_GROUP.search(os.path.splitext(os.path.basename(path))[0])
        if match is None:
            raise ConfigError(f"--validation holdout needs UCF-101's v_<Class>_gXX_cYY names, got {path}; use "
                              f"--validation test for other names")
        groups.append(int(match.group(1)))
    held = sorted(set(groups))[-HOLDOUT_GROUPS:]
    train = [sample for sample, group in zip(found.train, groups) if group not in held]
    val = [sample for sample, group in zip(found.train, groups) if group in held]
    return train, val, f"training groups {', '.join(f'g{g:02d}' for g in held)} of split {split}"


def hmdb51_holdout(found, split):
    """The videos split `split` marks 0 (used for neither training nor test); the training set is unchanged."""
    return found.train, found.unused, f"the videos split {split} marks 0 (neither train nor test)"


def folder_holdout(found, split=None):
    """The 1st, (HOLDOUT_EVERY + 1)-th, ... training video of each class in name order, for classes with >= 2."""
    by_class = {}
    for sample in found.train:
        by_class.setdefault(sample[1], []).append(sample)
    train, val = [], []
    for samples in by_class.values():
        for k, sample in enumerate(samples):
            (val if len(samples) >= 2 and k % HOLDOUT_EVERY == 0 else train).append(sample)
    return train, val, f"every {HOLDOUT_EVERY}th training video of each class"


def holdout_validation(name, found, split):
    """(train, val, what val is) with val held out of the training data; a ConfigError when that leaves a class
    without training videos or finds no validation video."""
    train, val, description = HOLDOUTS[name](found, split)
    emptied = sorted({label for _, label in found.train} - {label for _, label in train})
    if emptied:
        raise ConfigError(f"--validation holdout would leave class {found.classes[emptied[0]]} without training "
                          f"videos (the validation set takes {description}); use --validation test instead")
    if not val:
        raise ConfigError(f"--validation holdout finds no validation videos in {name} ({description}); use "
                          f"--validation test instead")
    return train, val, description


VIDEO_DATASETS = {"ucf101": ucf101_samples, "hmdb51": hmdb51_samples, "kinetics": folder_samples,
                  "videofolder": folder_samples, "fake": None}
HOLDOUTS = {"ucf101": ucf101_holdout, "hmdb51": hmdb51_holdout, "kinetics": folder_holdout,
            "videofolder": folder_holdout}
VALIDATIONS = {"holdout": "videos held out of the training data", "test": "the test split"}
FAKE_DEFAULTS = dict(num_train=64, num_val=32, num_classes=6, frames=None)
# The largest spatial downsampling of the video backbones: models/video.py's 3-D ResNets halve the frame in conv1,
# the max-pool and layers 2-4 (x32; torchvision's r3d / mc3 / r2plus1d x16). A smaller frame leaves the last
# stages 1 x 1 maps of zero padding: it trains, on nothing. The entry points pass min_frame_size=MIN_FRAME_SIZE.
MIN_FRAME_SIZE = 32


def build_video_datasets(name, data_dir, split=1, clip_len=16, frame_step=1, frame_size=112, hflip=0.5,
                         test_clips=10, validation="holdout", train_crop="corner", crop_scales=CROP_SCALES,
                         min_frame_size=None, **options):
    """(train_set, val_set, test_set, info) of video dataset `name` under data_dir; see the module docstring.

    split: the official split (ucf101, hmdb51; ignored otherwise). clip_len frames taken every frame_step frames,
    frame_size x frame_size pixels. hflip: probability of mirroring a training clip; a mirror turns "moving left"
    into "moving right" and clockwise into counter-clockwise, so classes defined by direction need hflip 0.
    test_clips: clips per video in test_set. validation: what val_set (the per-epoch validation, on which a best
    epoch is chosen) holds: 'holdout' (default) videos held out of the training data, never test videos (ucf101:
    the split's three highest-numbered training groups; hmdb51: the videos the split marks 0; kinetics /
    videofolder: every 50th training video of each class; fake: its generated validation videos); 'test' the test
    split itself (the 3D-ResNets framework's practice). test_set is the test split either way.
    train_crop: the training clip's spatial crop, a square of side s x the short side with s drawn from
    crop_scales (default 1, 2^-1/4, ..., 1/2), at 'corner' (default, 3D-ResNets': the centre or one of the four
    corners), 'center' (always the centre) or 'random' (anywhere, uniformly). min_frame_size: refuse a smaller
    frame_size (None: any; the entry points pass MIN_FRAME_SIZE, the networks' downsampling).
    Checked up front, each a one-line ConfigError: bad values, split files naming missing videos, classes without
    training videos, frame folders without frames or with gaps in their numbering.
    """
    if name not in VIDEO_DATASETS:
        raise ConfigError(f"unknown video dataset '{name}': choose one of {', '.join(sorted(VIDEO_DATASETS))}")
    if validation not in VALIDATIONS:
        raise ConfigError(f"unknown validation '{validation}': choose " + " or ".join(
            f"'{key}' ({meaning})" for key, meaning in VALIDATIONS.items()))
    problems = check_clip_options(clip_len, frame_step, frame_size, hflip, test_clips)
    if problems:
        raise ConfigError("; ".join(problems))
    normalization = options.pop("normalization", DEFAULT_NORMALIZATION)
    use_frames = options.pop("use_frames", None)
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalization '{normalization}': choose one of {', '.join(NORMALIZATIONS)}")
    allowed = set(FAKE_DEFAULTS) if name == "fake" else set()
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(f"video dataset '{name}' takes no option(s) {', '.join(unknown)}")
    if name in ("ucf101", "hmdb51") and split not in (1, 2, 3):
        raise ConfigError(f"{name} has official splits 1, 2 and 3, got split {split}")
    _check_frame_size(frame_size, min_frame_size)
    problems = check_train_crop(train_crop, crop_scales)
    if problems:
        raise ConfigError("; ".join(problems))
    train_tf = TrainClip(clip_len, frame_step, frame_size, hflip, scales=crop_scales, normalization=normalization,
                         train_crop=train_crop)
    val_tf = EvalClips(clip_len, frame_step, frame_size, None, normalization)
    test_tf = EvalClips(clip_len, frame_step, frame_size, test_clips, normalization)
    if name == "fake":
        sets, classes, source = _fake_sets(dict(FAKE_DEFAULTS, **options), clip_len, frame_step, frame_size,
                                           (train_tf, val_tf, test_tf))
        val_from = "generated validation videos (the test set's videos too)"
        source_root = ""
    else:
        data_dir = os.fspath(data_dir) if data_dir is not None else "."  # a missing one: the layout says what to get
        found = VIDEO_DATASETS[name](data_dir, split, use_frames)
        classes = found.classes
        if validation == "test":
            train, val, val_from = found.train, found.test, "the test split"
        else:
            train, val, val_from = holdout_validation(name, found, split)
        counts = _frame_counts(train + val + found.test) if found.frames else {}
        sets = (VideoFileDataset(train, classes, train_tf, "train", counts),
                VideoFileDataset(val, classes, val_tf, "val", counts),
                VideoFileDataset(found.test, classes, test_tf, "test", counts))
        source, source_root = ("frames" if found.frames else "videos"), found.root
    info = VideoDatasetInfo(name, len(classes), frame_size, False, classes=tuple(classes), num_train=len(sets[0]),
                            num_val=len(sets[1]), num_test=len(sets[2]), clip_len=clip_len, frame_step=frame_step,
                            test_clips=test_clips, split=split, source=source, normalization=normalization,
                            validation=validation, val_from=val_from, source_root=source_root,
                            train_crop=train_crop)
    return (*sets, info)


def _check_frame_size(frame_size, minimum):
    if minimum is not None and frame_size < minimum:
        raise ConfigError(f"--frame-size {frame_size} is below {minimum}, the video networks' spatial downsampling "
                          f"(a smaller frame leaves their last stages nothing but padding); use --frame-size "
                          f"{minimum} or more (the recipe's is 112)")


def source_line(info):
    """One line saying where the clips come from (for the entry point's log): videos, frame folders (read instead
    of the videos because their root exists) or generated, with the numbers of videos."""
    counts = f"{info.num_train} training, {info.num_val} validation, {info.num_test} test videos"
    if info.source == "frames":
        return (f"data: frame folders under {info.source_root} instead of the videos ({counts}; "
                f"rename that root to read the videos)")
    if info.source == "videos":
        return f"data: videos under {info.source_root} ({counts})"
    return f"data: generated videos ({counts})"


class ShortVideos(NamedTuple):
    """short of checked videos (checked: all, or an evenly spaced sample of total) have fewer frames than span."""
    short: int
    checked: int
    total: int
    span: int

    @property
    def fraction(self):
        return self.short / self.checked if self.checked else 0.0


def _num_frames(dataset, index):
    """Frames of video `index`: known for frame folders and generated videos, else the container's count."""
    if isinstance(dataset, FakeVideoDataset):
        return dataset.num_frames
    path = dataset.samples[index][0]
    if path in dataset.frame_counts:
        return dataset.frame_counts[path]
    with VideoFileReader(path) as reader:  # opens the file and reads its header; decodes nothing if it has a count
        return reader.num_frames


def short_videos(dataset, max_checked=200):
    """ShortVideos: how many videos of `dataset` are shorter than one clip's span ((clip_len - 1) x frame_step + 1
    of its transform), whose clips are therefore loop-padded (frames repeated). Frame folders are all counted
    (their counts are known); video files are opened, so at most max_checked evenly spaced ones (None: all)."""
    span = clip_span(dataset.transform.clip_len, dataset.transform.frame_step)
    total = len(dataset)
    checked = total if max_checked is None or getattr(dataset, "frame_counts", None) else min(total, max_checked)
    picks = sorted({k * total // checked for k in range(checked)}) if checked else []
    short = sum(_num_frames(dataset, index) < span for index in picks)
    return ShortVideos(short, len(picks), total, span)


def short_video_warning(dataset, max_checked=200):
    """The one warning line for the entry point when videos are shorter than a clip's span, else None."""
    found = short_videos(dataset, max_checked)
    if not found.short:
        return None
    sample = "" if found.checked == found.total else f" (of {found.checked} checked)"
    transform = dataset.transform
    return (f"{found.short} videos{sample}, {100 * found.fraction:.0f}%, are shorter than a clip's span of "
            f"{found.span} frames (--clip-len {transform.clip_len} x --frame-step {transform.frame_step}): their "
            f"clips repeat frames (loop padding); a smaller --frame-step or --clip-len avoids it")


def _fake_sets(options, clip_len, frame_step, frame_size, transforms):
    """FakeVideoDataset train / val / test (test = the val videos, multi-clip), frames of frame_size x 4/3."""
    num_train, num_val, num_classes = options["num_train"], options["num_val"], options["num_classes"]
    frames = options["frames"] or clip_span(clip_len, frame_step) + clip_len // 2
    if min(num_train, num_val, frames) < 1 or num_classes < 2:
        raise ConfigError(f"fake video data needs num_train, num_val, frames >= 1 and num_classes >= 2, got "
                          f"{num_train}, {num_val}, {frames}, {num_classes}")
    height, width = frame_size, frame_size * 4 // 3
    train_tf, val_tf, test_tf = transforms
    sets = (FakeVideoDataset(num_train, num_classes, frames, height, width, 0, train_tf, "train"),
            FakeVideoDataset(num_val, num_classes, frames, height, width, 1, val_tf, "val"),
            FakeVideoDataset(num_val, num_classes, frames, height, width, 1, test_tf, "test"))
    return sets, [f"class{c}" for c in range(num_classes)], "generated"
