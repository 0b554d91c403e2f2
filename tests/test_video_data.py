"""Video data: layouts and splits from real .avi files, decoding (videos and frame folders agree exactly), errors
for broken files, clip sampling and crops, determinism in (seed, epoch, index), the multi-clip score."""
import math
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from videogen import (
    class_video,
    decode_video,
    extract_frame_folders,
    write_frame_folder,
    write_hmdb51,
    write_ucf101,
    write_video,
    write_video_folder,
)

from lib.data import build_loaders, video_reader
from lib.data.video import (
    MIN_FRAME_SIZE,
    build_video_datasets,
    short_video_warning,
    short_videos,
    source_line,
    video_scores,
)
from lib.data.video_reader import ShortRead, VideoFileReader, read_clip_frames
from lib.data.video_transforms import (
    CROP_POSITIONS,
    CROP_SCALES,
    NORMALIZATIONS,
    TRAIN_CROPS,
    EvalClips,
    TrainClip,
    center_start,
    clip_indices,
    crop_box,
    even_starts,
    random_start,
    to_normalized_tensor,
)
from lib.errors import ConfigError

SMALL = dict(clip_len=8, frame_size=16, test_clips=3)


@pytest.fixture(scope="module")
def ucf(tmp_path_factory):
    """UCF-101 layout (XVID) with its three splits; returns (root, splits)."""
    root = tmp_path_factory.mktemp("ucf")
    return str(root), write_ucf101(str(root))


@pytest.fixture(scope="module")
def hmdb(tmp_path_factory):
    root = tmp_path_factory.mktemp("hmdb")
    return str(root), write_hmdb51(str(root), fourcc="MJPG")


def relative_samples(dataset, video_root):
    return [(os.path.relpath(path, video_root).replace(os.sep, "/"), label) for path, label in dataset.samples]


# ---- layouts and splits ---------------------------------------------------------------------------------------

def paths(*datasets):
    return [path for dataset in datasets for path, _ in dataset.samples]


def assert_disjoint(train, val, test):
    """No video in two of the sets (and none twice in one)."""
    every = paths(train, val, test)
    assert len(set(every)) == len(every)


@pytest.mark.parametrize("split", [1, 2, 3])
def test_ucf101_validation_test_is_the_3d_resnets_split(ucf, split):
    """validation='test': train = trainlist0<split>, val = test = testlist0<split> (the sets before 'holdout')."""
    root, splits = ucf
    train, val, test, info = build_video_datasets("ucf101", root, split=split, validation="test", **SMALL)
    assert info.classes == ("ApplyEyeMakeup", "Basketball", "HandstandPushups") and info.num_classes == 3
    expected_train, expected_test = splits[split]
    assert relative_samples(train, os.path.join(root, "UCF-101")) == expected_train
    assert relative_samples(val, os.path.join(root, "UCF-101")) == expected_test
    assert test.samples == val.samples and train.targets == [label for _, label in expected_train]
    assert (info.num_train, info.num_val, info.num_test, info.split, info.source) == (15, 6, 6, split, "videos")
    assert (info.validation, info.val_from) == ("test", "the test split")
    # split k tests on groups 2k-1 and 2k, and no video is in both sets
    assert {int(path.split("_g")[1][:2]) for path, _ in expected_test} == {2 * split - 1, 2 * split}
    assert not set(paths(train)) & set(paths(test))


# the layout's training groups per split: 1 and 2 train on 3-7, 1-2 + 5-7, 3 on 1-4 + 7: the top three differ
UCF_HELD_OUT = {1: {5, 6, 7}, 2: {5, 6, 7}, 3: {3, 4, 7}}


@pytest.mark.parametrize("split", [1, 2, 3])
def test_ucf101_holdout_validates_on_the_splits_three_highest_training_groups(ucf, split):
    root, splits = ucf
    train, val, test, info = build_video_datasets("ucf101", root, split=split, **SMALL)
    official_train, official_test = splits[split]

    def group(relative):
        return int(relative.split("_g")[1][:2])

    video_root = os.path.join(root, "UCF-101")
    assert relative_samples(val, video_root) == [s for s in official_train if group(s[0]) in UCF_HELD_OUT[split]]
    assert relative_samples(train, video_root) == [s for s in official_train
                                                   if group(s[0]) not in UCF_HELD_OUT[split]]
    assert relative_samples(test, video_root) == official_test  # the test split, untouched
    assert_disjoint(train, val, test)
    assert sorted(paths(train, val)) == sorted(os.path.join(video_root, rel) for rel, _ in official_train)
    assert sorted(set(train.targets)) == sorted(set(val.targets)) == [0, 1, 2]  # whole groups, every class
    assert (info.validation, info.num_train, info.num_val, info.num_test) == ("holdout", 6, 9, 6)
    assert info.val_from == f"training groups {', '.join(f'g{g:02d}' for g in sorted(UCF_HELD_OUT[split]))} " \
                            f"of split {split}"
    # the validation transform (centre clip) on the held-out videos
    assert val.mode == "val" and val[0][0].shape == (3, 8, 16, 16)


def test_ucf101_holdout_refuses_to_empty_a_class_and_needs_group_names(tmp_path):
    # 3 groups, split 1 tests group 1: the three highest training groups are all of them
    write_ucf101(str(tmp_path), groups=3, test_groups={k: (k,) for k in (1, 2, 3)})
    with pytest.raises(ConfigError) as caught:
        build_video_datasets("ucf101", tmp_path, **SMALL)
    message = str(caught.value)
    assert "ApplyEyeMakeup without training videos" in message and "g02, g03" in message
    assert "--validation test" in message
    assert "\n" not in message
    assert build_video_datasets("ucf101", tmp_path, validation="test", **SMALL)[3].num_train == 6
    lists = tmp_path / "ucfTrainTestlist"
    os.rename(tmp_path / "UCF-101" / "Basketball" / "v_Basketball_g02_c01.avi", tmp_path / "UCF-101" / "Basketball"
              / "clip2.avi")
    # every class keeps a training video: a class without one is its own error (test_class_without_videos_...)
    (lists / "trainlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01.avi 1\nBasketball/clip2.avi 2\n"
                                           "HandstandPushups/v_HandStandPushups_g02_c01.avi 3\n")
    with pytest.raises(ConfigError, match=r"v_<Class>_gXX_cYY names, got .*clip2.avi"):
        build_video_datasets("ucf101", tmp_path, **SMALL)


@pytest.mark.parametrize("split", [1, 2, 3])
def test_hmdb51_marks_1_train_2_test_0_validate(hmdb, split):
    root, splits = hmdb
    video_root = os.path.join(root, "hmdb51")
    train, val, test, info = build_video_datasets("hmdb51", root, split=split, **SMALL)
    assert info.classes == ("brush_hair", "cartwheel", "smile")
    assert relative_samples(train, video_root) == splits[split][0]
    assert relative_samples(test, video_root) == splits[split][1]
    # write_hmdb51 marks video i of a class (i + split) % 3: the 0 goes to video (3 - split) % 3
    unused = (3 - split) % 3
    assert relative_samples(val, video_root) == [(f"{name}/{name}_video_{unused}.avi", label)
                                                 for label, name in enumerate(info.classes)]
    assert_disjoint(train, val, test)
    assert len(paths(train, val, test)) == 9  # every video of the layout, once
    assert (info.validation, info.num_train, info.num_val, info.num_test) == ("holdout", 3, 3, 3)
    assert info.val_from == f"the videos split {split} marks 0 (neither train nor test)"
    old_train, old_val, old_test, _ = build_video_datasets("hmdb51", root, split=split, validation="test", **SMALL)
    assert old_train.samples == train.samples and old_val.samples == old_test.samples == test.samples


def test_hmdb51_holdout_without_0_marks_is_one_line(tmp_path):
    write_hmdb51(str(tmp_path), classes=("smile",), videos=2)  # split 1: video 0 marked 1, video 1 marked 2
    with pytest.raises(ConfigError, match=r"^--validation holdout finds no validation videos in hmdb51 \(the "
                                          r"videos split 1 marks 0 .*--validation test instead$"):
        build_video_datasets("hmdb51", tmp_path, **SMALL)
    assert build_video_datasets("hmdb51", tmp_path, validation="test", **SMALL)[3].num_val == 1


def test_video_folder_holdout_takes_every_50th_training_video_of_each_class(tmp_path):
    tiny = dict(num_frames=2, height=16, width=16)
    counts = {"a": 101, "b": 2, "c": 1}
    for label, (name, count) in enumerate(counts.items()):
        for i in range(count):
            write_video(str(tmp_path / "train" / name / f"{i:03d}.avi"), class_video(label, **tiny), "MJPG")
        write_video(str(tmp_path / "val" / name / "v.avi"), class_video(label, seed=9, **tiny), "MJPG")
    train, val, test, info = build_video_datasets("videofolder", tmp_path, **SMALL)

    def names(dataset):
        return [os.path.relpath(path, tmp_path).replace(os.sep, "/") for path, _ in dataset.samples]

    # the 1st, 51st and 101st of a's 101 videos, b's first of 2; c's only video keeps training
    assert names(val) == ["train/a/000.avi", "train/a/050.avi", "train/a/100.avi", "train/b/000.avi"]
    assert val.targets == [0, 0, 0, 1]
    assert names(train) == [f"train/a/{i:03d}.avi" for i in range(101) if i % 50] + ["train/b/001.avi",
                                                                                     "train/c/000.avi"]
    assert names(test) == ["val/a/v.avi", "val/b/v.avi", "val/c/v.avi"]
    assert_disjoint(train, val, test)
    assert (info.validation, info.num_train, info.num_val, info.num_test) == ("holdout", 100, 4, 3)
    assert info.val_from == "every 50th training video of each class"
    old_train, old_val, old_test, old_info = build_video_datasets("kinetics", tmp_path, validation="test", **SMALL)
    assert names(old_train) == sorted(names(train) + names(val)) and names(old_val) == names(old_test) == names(test)
    assert (old_info.validation, old_info.num_val) == ("test", 3)


def test_video_folder_holdout_with_one_video_per_class_is_one_line(tmp_path):
    write_video_folder(str(tmp_path), n_per_class=(1, 1))
    with pytest.raises(ConfigError, match=r"^--validation holdout finds no validation videos in kinetics"):
        build_video_datasets("kinetics", tmp_path, **SMALL)


@pytest.mark.parametrize("name", ["kinetics", "videofolder"])
def test_video_folder_trees_use_the_training_classes(tmp_path, name):
    write_video_folder(str(tmp_path), classes=("jump", "run", "swim"), n_per_class=(2, 1))
    shutil.rmtree(tmp_path / "val" / "run")  # val may lack a class; labels still follow train/
    write_video(str(tmp_path / "train" / "swim" / "2.mp4"), class_video(2), "mp4v")  # other containers count
    (tmp_path / "val" / "swim" / "notes.txt").write_text("not a video")
    train, val, test, info = build_video_datasets(name, tmp_path, **SMALL)
    assert info.classes == ("jump", "run", "swim") and len(train) + len(val) == 7
    assert train.samples[-1][0].endswith("2.mp4") and train[len(train) - 1][0].shape == (3, 8, 16, 16)
    assert [(os.path.basename(p), label) for p, label in test.samples] == [("0.avi", 0), ("0.avi", 2)]
    os.makedirs(tmp_path / "val" / "fly")
    with pytest.raises(ConfigError, match="fly"):
        build_video_datasets(name, tmp_path, **SMALL)


@pytest.mark.parametrize("name,what", [("ucf101", "UCF101.rar"), ("hmdb51", "hmdb51_org.rar"),
                                       ("kinetics", "train/<class>"), ("videofolder", "train/<class>")])
def test_missing_dataset_is_one_line_naming_the_download_and_place(tmp_path, name, what):
    for data_dir in (tmp_path, tmp_path / "not_there"):
        with pytest.raises(ConfigError) as caught:
            build_video_datasets(name, data_dir)
        message = str(caught.value)
        assert what in message and str(data_dir) in message and "\n" not in message


def test_bad_options_are_config_errors(ucf):
    root, _ = ucf
    for kwargs in (dict(split=4), dict(clip_len=0), dict(frame_step=0), dict(hflip=1.5), dict(test_clips=0),
                   dict(normalization="imagenet"), dict(num_train=3), dict(validation="val")):
        with pytest.raises(ConfigError):
            build_video_datasets("ucf101", root, **kwargs)
    for name in ("ucf101", "fake"):
        with pytest.raises(ConfigError) as caught:
            build_video_datasets(name, root, validation="train")
        assert str(caught.value) == ("unknown validation 'train': choose 'holdout' (videos held out of the "
                                     "training data) or 'test' (the test split)")
    with pytest.raises(ConfigError, match="unknown video dataset"):
        build_video_datasets("ucf", root)


def test_split_file_errors_name_the_line(tmp_path):
    write_ucf101(str(tmp_path))
    lists = tmp_path / "ucfTrainTestlist"
    (lists / "trainlist01.txt").write_text("Basketball/v_Basketball_g02_c01.avi 3\n")
    with pytest.raises(ConfigError, match=r"trainlist01.txt:1: label 3 disagrees"):
        build_video_datasets("ucf101", tmp_path)
    (lists / "trainlist01.txt").write_text("Basketball/v_Basketball_g09_c01.avi 2\n")
    with pytest.raises(ConfigError, match=r"v_Basketball_g09_c01.avi does not exist"):
        build_video_datasets("ucf101", tmp_path)


# ---- decoding --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fourcc", ["XVID", "MJPG"])
@pytest.mark.parametrize("seek_min", [0, 1000])
def test_reader_returns_the_frames_at_the_indices(tmp_path, fourcc, seek_min):
    path = write_video(str(tmp_path / "v.avi"), class_video(1), fourcc)
    every = decode_video(path)
    assert len(every) == 24 and len({frame.tobytes() for frame in every}) == 24
    with VideoFileReader(path, seek_min=seek_min) as reader:
        assert reader.num_frames == 24
        for indices in ([0, 1, 2], [5, 3, 5, 3], [20, 21, 22, 23], [2, 10]):  # repeats, unsorted, backwards
            assert np.array_equal(reader.read(indices), every[indices])
        with pytest.raises(ShortRead):
            reader.read([23, 24])


@pytest.mark.parametrize("fourcc", ["XVID", "MJPG"])
def test_seeking_far_into_a_long_video_lands_on_the_right_frames(tmp_path, fourcc):
    path = write_video(str(tmp_path / "long.avi"), class_video(0, num_frames=300, height=16, width=24), fourcc)
    every = decode_video(path)
    assert len({frame.tobytes() for frame in every}) == 300  # a wrong frame cannot pass for the right one
    with VideoFileReader(path) as reader:  # seeks past the default 48 frames
        for indices in ([250, 251, 290], [60, 61], [280, 299]):
            assert np.array_equal(reader.read(indices), every[indices])


@pytest.mark.parametrize("fourcc", ["XVID", "MJPG"])
def test_frame_folders_give_the_same_clips_as_the_videos(tmp_path, fourcc):
    write_ucf101(str(tmp_path), fourcc=fourcc)
    from_videos = build_video_datasets("ucf101", tmp_path, **SMALL)
    with pytest.raises(ConfigError, match="UCF-101_jpg does not exist"):
        build_video_datasets("ucf101", tmp_path, use_frames=True)
    extract_frame_folders(str(tmp_path / "UCF-101"))
    from_frames = build_video_datasets("ucf101", tmp_path, **SMALL)
    assert from_frames[3].source == "frames" and from_videos[3].source == "videos"
    assert all(os.path.isdir(path) for path, _ in from_frames[0].samples)
    assert build_video_datasets("ucf101", tmp_path, use_frames=False, **SMALL)[3].source == "videos"
    for videos, frames in zip(from_videos[:3], from_frames[:3]):
        for index in range(len(videos)):
            torch.manual_seed(index)
            clip, label = videos[index]
            torch.manual_seed(index)
            assert torch.equal(frames[index][0], clip) and frames[index][1] == label


@pytest.mark.parametrize("frame_step", [1, 2])
def test_eval_clips_are_the_expected_frames_of_the_decoded_video(ucf, frame_step):
    root, _ = ucf
    _, val, test, _ = build_video_datasets("ucf101", root, frame_step=frame_step, **SMALL)
    path, label = val.samples[2]
    every = decode_video(path)  # 24 frames; a clip spans 8 (step 1) or 15 (step 2) of them
    centre = [12 - (7 * frame_step + 1) // 2 + frame_step * k for k in range(8)]
    clip, got_label = val[2]
    assert got_label == label and torch.equal(clip, EvalClips(8, frame_step, 16).pixels(every[centre]))
    last = 24 - (7 * frame_step + 1)
    starts = [0, last // 2, last]
    every = decode_video(test.samples[2][0])
    clips = test[2][0]
    for clip, start in zip(clips, starts, strict=True):
        frames = every[start:start + 7 * frame_step + 1:frame_step]
        assert torch.equal(clip, EvalClips(8, frame_step, 16).pixels(frames))


def test_jpeg_frame_folders_are_found(tmp_path):
    frames = class_video(0)
    folder = write_frame_folder(str(tmp_path / "v"), frames, ext=".jpg")
    got = read_clip_frames(folder, lambda n: [0, n - 1])
    assert got.shape == (2, 32, 40, 3) and np.abs(got.astype(int) - frames[[0, 23]]).mean() < 8
    os.remove(os.path.join(folder, "image_00005.jpg"))  # a gap: that frame is missing, named
    with pytest.raises(ConfigError, match="image_00005.jpg"):
        read_clip_frames(folder, lambda n: [4])


class LyingCapture:
    """A cv2.VideoCapture whose container frame count is off by `extra` frames (0: claims no count at all).
    A wrapper: subclasses of cv2.VideoCapture crash in get() once another instance was released."""
    extra = 3
    real = cv2.VideoCapture

    def __init__(self, *args):
        self.capture = self.real(*args)

    def __getattr__(self, name):
        return getattr(self.capture, name)

    def get(self, prop):
        value = self.capture.get(prop)
        if prop == cv2.CAP_PROP_FRAME_COUNT:
            return value + self.extra if self.extra else 0
        return value


@pytest.mark.parametrize("extra", [3, 0])
def test_a_wrong_container_frame_count_gives_the_same_clips_in_every_process(tmp_path, monkeypatch, extra):
    path = write_video(str(tmp_path / "v.avi"), class_video(2), "XVID")
    every = decode_video(path)
    transform = TrainClip(clip_len=8, size=16)
    monkeypatch.setattr(LyingCapture, "extra", extra)
    monkeypatch.setattr(video_reader.cv2, "VideoCapture", LyingCapture)
    claimed = 24 + extra if extra else 24  # no count in the container: counted by decoding
    learnt = {}
    for u in (0.0, 0.5, 0.999):
        chosen = transform.indices(claimed, u)  # what the container's count gives, unless it reaches too far
        expected = chosen if max(chosen) < 24 else transform.indices(24, u)
        for true_counts in ({}, learnt):  # a fresh process, and one that read this video before
            frames = read_clip_frames(path, lambda n: transform.indices(n, u), true_counts)
            assert np.array_equal(frames, every[expected])
    assert learnt == ({path: 24} if extra else {})


def _one_line_error(dataset, index, path):
    with pytest.raises(ConfigError) as caught:
        dataset[index]
    message = str(caught.value)
    assert message.startswith(f"cannot read video {path}") and "\n" not in message
    return message


@pytest.mark.parametrize("damage", ["empty", "text", "truncated_xvid", "truncated_mjpg"])
def test_broken_videos_are_one_line_errors_naming_the_file(tmp_path, damage):
    write_video_folder(str(tmp_path), classes=("a", "b"), n_per_class=(1, 1), fourcc="MJPG")
    bad = tmp_path / "val" / "b" / "0.avi"
    if damage.startswith("truncated"):
        write_video(str(bad), class_video(1), damage[-4:].upper())
        data = bad.read_bytes()
        bad.write_bytes(data[:int(len(data) * 0.7)])
    else:
        bad.write_bytes(b"" if damage == "empty" else b"hello, not a video " * 20)
    _, val, test, _ = build_video_datasets("videofolder", tmp_path, validation="test", **SMALL)
    message = _one_line_error(val, 1, bad)
    if damage == "truncated_mjpg":  # some frames decode, far fewer than the header promises
        assert "truncated" in message and "24 frames" in message
    _one_line_error(test, 1, bad)
    val[0]  # the good video still reads
    batches = iter(torch.utils.data.DataLoader(val, batch_size=1, num_workers=1))
    try:
        with pytest.raises(ConfigError) as caught:
            list(batches)
    finally:  # now: a failed loader left to the garbage collector waits 5 s for its worker
        batches._shutdown_workers()
    assert str(caught.value).startswith(f"cannot read video {bad}") and "Traceback" not in str(caught.value)


# ---- clip sampling and crops -------------------------------------------------------------------------------------

def test_clip_indices_steps_and_loop_padding():
    assert clip_indices(24, 3, 4, 2) == [3, 5, 7, 9]
    assert clip_indices(3, 0, 8, 1) == [0, 1, 2, 0, 1, 2, 0, 1]  # loop padding
    assert clip_indices(5, 0, 4, 2) == [0, 2, 4, 0]  # step taken first, then looped
    assert clip_indices(1, 0, 3, 1) == [0, 0, 0]


@pytest.mark.parametrize("num_frames,clip_len,step", [(24, 8, 1), (24, 8, 2), (16, 16, 1), (10, 16, 1)])
def test_random_temporal_crops_cover_every_start_inside_the_video(num_frames, clip_len, step):
    span = (clip_len - 1) * step + 1
    starts = {random_start(num_frames, clip_len, step, u) for u in np.linspace(0, 1, 500, endpoint=False)}
    assert starts == set(range(max(1, num_frames - span + 1)))
    transform = TrainClip(clip_len, step, size=16)
    for u in (0.0, 0.3, 0.9999):
        indices = transform.indices(num_frames, u)
        assert len(indices) == clip_len and all(0 <= i < num_frames for i in indices)


def test_centre_and_evenly_spaced_clips():
    assert center_start(24, 8, 1) == 8 and center_start(24, 8, 2) == 5 and center_start(5, 8, 1) == 0
    assert center_start(23, 8, 1) == 7 and center_start(24, 7, 1) == 9  # middle frame 12 (11) minus half a clip
    assert even_starts(24, 8, 1, 3) == [0, 8, 16] and even_starts(24, 8, 1, 1) == [8]
    assert even_starts(6, 8, 1, 4) == [0, 0, 0, 0]
    test = EvalClips(clip_len=8, count=3)
    assert test.indices(24) == [list(range(s, s + 8)) for s in (0, 8, 16)]
    assert EvalClips(clip_len=8).indices(24) == list(range(8, 16))


@pytest.mark.parametrize("scale", CROP_SCALES)
def test_crop_boxes_are_centre_or_corner_squares_of_the_scaled_short_side(scale):
    height, width = 30, 40
    side = int(30 * scale)
    boxes = {position: crop_box(height, width, scale, position) for position in CROP_POSITIONS}
    assert boxes == {"c": ((30 - side) // 2, (40 - side) // 2, side), "tl": (0, 0, side), "tr": (0, 40 - side, side),
                     "bl": (30 - side, 0, side), "br": (30 - side, 40 - side, side)}
    assert [round(s, 6) for s in CROP_SCALES] == [1, round(2 ** -0.25, 6), round(2 ** -0.5, 6),
                                                  round(2 ** -0.75, 6), 0.5]


def test_train_pixels_are_the_chosen_crop_flipped_and_normalized():
    frames = np.random.default_rng(0).integers(0, 256, size=(4, 32, 40, 3), dtype=np.uint8)
    transform = TrainClip(clip_len=4, size=16)  # scale 1/2 of 32 = 16: no resize, exact pixels
    clip = transform.pixels(frames, 0.5, "br", False)
    mean, std = (torch.tensor(v).view(3, 1, 1, 1) for v in NORMALIZATIONS["kinetics"])
    expected = (torch.from_numpy(frames[:, 16:, 24:]).permute(3, 0, 1, 2).float() - mean) / std
    assert clip.shape == (3, 4, 16, 16) and torch.allclose(clip, expected, atol=1e-6)
    assert torch.equal(transform.pixels(frames, 0.5, "br", True), clip.flip(-1))
    # scale 1: the centred 32 x 32 square, shrunk to 16 x 16 by averaging 2 x 2 blocks (rounded to uint8)
    blocks = frames[:, :, 4:36].reshape(4, 16, 2, 16, 2, 3).mean(axis=(2, 4))
    expected = (torch.from_numpy(blocks).permute(3, 0, 1, 2).float() - mean) / std
    assert torch.allclose(transform.pixels(frames, 1.0, "c", False), expected, atol=0.51 / 37.8)


def test_normalizations_are_the_3d_resnets_ones():
    pixel = np.full((1, 1, 1, 3), 128, dtype=np.uint8)
    kinetics = to_normalized_tensor(pixel, "kinetics").flatten()  # 0-1 statistics, applied to 128 / 255
    assert torch.allclose(kinetics, torch.tensor([(128 / 255 - 0.4345) / 0.2768, (128 / 255 - 0.4051) / 0.2713,
                                                  (128 / 255 - 0.3775) / 0.2737]))
    assert torch.allclose(to_normalized_tensor(pixel, "activitynet").flatten(),
                          torch.tensor([128 - 114.7748, 128 - 107.7354, 128 - 99.4750]))


def test_hflip_one_mirrors_the_same_clip_and_zero_never(ucf):
    root, _ = ucf
    never = build_video_datasets("ucf101", root, hflip=0.0, **SMALL)[0]
    always = build_video_datasets("ucf101", root, hflip=1.0, **SMALL)[0]
    half = build_video_datasets("ucf101", root, hflip=0.5, **SMALL)[0]
    flips = []
    for seed in range(10):
        torch.manual_seed(seed)
        plain = never[1][0]
        torch.manual_seed(seed)
        assert torch.equal(always[1][0], plain.flip(-1))
        torch.manual_seed(seed)
        flips.append(torch.equal(half[1][0], plain.flip(-1)))
    assert 0 < sum(flips) < len(flips)


def test_training_clips_vary_and_eval_clips_do_not(ucf):
    root, _ = ucf
    train, val, test, _ = build_video_datasets("ucf101", root, validation="test", **SMALL)  # val = test videos
    torch.manual_seed(0)
    draws = [train[0][0] for _ in range(4)]
    assert any(not torch.equal(draws[0], other) for other in draws[1:])
    torch.manual_seed(0)
    a = (val[0][0], test[0][0])
    torch.manual_seed(1)
    b = (val[0][0], test[0][0])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[1].shape == (3, 3, 8, 16, 16) and torch.equal(a[1][1], a[0])  # 3 clips of 24 frames: the middle one


def test_train_clips_are_a_function_of_seed_epoch_and_index_with_any_number_of_workers(ucf):
    root, _ = ucf
    train, val, _, _ = build_video_datasets("ucf101", root, **SMALL)

    def epoch_batches(workers, epoch):
        train_loader, _, sampler = build_loaders(train, val, batch_size=4, workers=workers, seed=67)
        sampler.set_epoch(epoch)
        return list(train_loader)

    torch.manual_seed(0)
    state = torch.get_rng_state()
    in_process = epoch_batches(0, 1)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(5)
    with_workers = epoch_batches(2, 1)
    assert [len(y) for _, y in in_process] == [4, 2]
    for (x0, y0), (x1, y1) in zip(in_process, with_workers, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    assert not torch.equal(epoch_batches(0, 2)[0][0], in_process[0][0])


# ---- multi-clip test score ---------------------------------------------------------------------------------------

def test_video_scores_average_softmax_over_clips_by_hand():
    ln2, ln3 = math.log(2), math.log(3)
    # clip 1: softmax(0, 0, 0) = 1/3 each; clip 2: softmax(ln 2, 0, 0) = (1/2, 1/4, 1/4)
    scores = video_scores(torch.tensor([[0.0, 0.0, 0.0], [ln2, 0.0, 0.0]]))
    assert torch.allclose(scores, torch.tensor([5 / 12, 7 / 24, 7 / 24]))
    # (1/4, 3/4) and (3/4, 1/4): the clips disagree, the video is a tie, though their logit sums are not equal
    pair = torch.tensor([[0.0, ln3], [ln3 + 5, 5.0]])
    assert torch.allclose(video_scores(pair), torch.tensor([0.5, 0.5]))
    batched = video_scores(torch.stack([pair, pair.flip(-1)]).half())
    assert batched.shape == (2, 2) and batched.dtype == torch.float32
    assert torch.allclose(batched, torch.full((2, 2), 0.5), atol=1e-3)


# ---- fake --------------------------------------------------------------------------------------------------------

def test_fake_video_clips_are_deterministic_shaped_and_class_dependent():
    train, val, test, info = build_video_datasets("fake", None, num_train=12, num_val=6, num_classes=3, **SMALL)
    assert (info.num_classes, info.num_train, info.num_val, info.source) == (3, 12, 6, "generated")
    torch.manual_seed(0)
    clip, label = train[4]
    torch.manual_seed(0)
    assert torch.equal(train[4][0], clip) and label == 1 and clip.shape == (3, 8, 16, 16)
    assert test[2][0].shape == (3, 3, 8, 16, 16) and torch.equal(val[2][0], val[2][0])
    # mirror-invariant classes: vertical motion only, so hflip cannot change what a clip shows
    video = train.video(4)
    square = np.all(video == train.palette[1].astype(np.uint8), axis=-1)
    rows = [set(np.flatnonzero(square[t].sum(axis=1) >= 4)) for t in range(2)]  # the 4 x 4 square's rows
    assert len(rows[0]) == 4 and rows[1] == {(row + 2) % 16 for row in rows[0]}  # class 1: down 2 pixels a frame
    # and every pixel is tinted with half the class colour (+ noise in [0, 80)): any crop tells the class
    background = video.astype(int) - train.palette[1] // 2
    assert background.min() >= 0 and np.mean(background < 80) > 0.9
    with pytest.raises(ConfigError):
        build_video_datasets("fake", None, num_classes=1)


@pytest.mark.parametrize("validation", ["holdout", "test"])
def test_fake_validates_on_its_own_generated_videos(validation):
    train, val, test, info = build_video_datasets("fake", None, num_train=6, num_val=3, num_classes=3,
                                                  validation=validation, **SMALL)
    assert (train.split_index, val.split_index, test.split_index) == (0, 1, 1)  # not the training videos
    assert (info.validation, info.val_from) == (validation, "generated validation videos (the test set's videos too)")


# ---- tools -------------------------------------------------------------------------------------------------------

def test_extract_frames_builds_the_tree_the_datasets_then_read(tmp_path, capsys):
    from tools.extract_frames import get_args_parser, main
    write_ucf101(str(tmp_path))
    from_videos = build_video_datasets("ucf101", tmp_path, **SMALL)[2]
    args = get_args_parser().parse_args(["--dataset", "ucf101", "--data-dir", str(tmp_path)])
    assert main(args) == 0
    assert sorted(os.listdir(tmp_path)) == ["UCF-101", "UCF-101_jpg", "ucfTrainTestlist"]
    from_frames = build_video_datasets("ucf101", tmp_path, **SMALL)[2]
    assert from_frames.samples[0][0].endswith(os.path.join("UCF-101_jpg", "ApplyEyeMakeup", "v_ApplyEyeMakeup_g01_c01"))
    assert len(os.listdir(from_frames.samples[0][0])) == 24
    assert (from_frames[0][0] - from_videos[0][0]).abs().mean() < 0.05  # JPEG quality 95
    assert main(get_args_parser().parse_args(["--dataset", "hmdb51", "--data-dir", str(tmp_path / "x")])) == 2
    assert "does not exist" in capsys.readouterr().err


# ---- checked up front (issue 24, items 6 and 7) ----------------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_line_error(*args, **kwargs):
    with pytest.raises(ConfigError) as caught:
        build_video_datasets(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_missing_listed_video_is_reported_when_the_dataset_is_built(tmp_path):
    splits = write_ucf101(str(tmp_path), groups=4, test_groups={k: (1,) for k in (1, 2, 3)})
    train = splits[1][0]
    # not the first line: the first is what a wrong --data-dir shows, and was all that was checked
    os.remove(tmp_path / "UCF-101" / train[4][0])
    message = one_line_error("ucf101", tmp_path, validation="test", **SMALL)
    assert f"trainlist01.txt:5: {tmp_path / 'UCF-101' / train[4][0]} does not exist" in message
    for k in (5, 6, 7, 8):
        os.remove(tmp_path / "UCF-101" / train[k][0])
    message = one_line_error("ucf101", tmp_path, validation="test", **SMALL)
    assert message.startswith("5 of the 9 videos the split files name do not exist")
    assert "trainlist01.txt:5:" in message and "trainlist01.txt:7:" in message and "and 2 more" in message


def test_a_missing_hmdb51_video_names_its_split_file_and_line(hmdb, tmp_path):
    shutil.copytree(hmdb[0], tmp_path / "h")
    os.remove(tmp_path / "h" / "hmdb51" / "smile" / "smile_video_2.avi")
    message = one_line_error("hmdb51", tmp_path / "h", **SMALL)
    assert "smile_test_split1.txt:3:" in message and "smile_video_2.avi does not exist" in message


def test_a_gap_in_a_frame_folder_is_reported_when_the_dataset_is_built(tmp_path):
    write_ucf101(str(tmp_path), groups=3, test_groups={k: (1,) for k in (1, 2, 3)}, num_frames=20)
    frame_root = extract_frame_folders(str(tmp_path / "UCF-101"))
    folder = os.path.join(frame_root, "Basketball", "v_Basketball_g03_c01")
    os.remove(os.path.join(folder, "image_00005.png"))
    message = one_line_error("ucf101", tmp_path, validation="test", **SMALL)
    assert message == (f"frame folder {folder} has gaps: image_00005.png missing of image_00001 ... image_00020 "
                       f"(extract the video's frames again)")
    for k in (7, 8, 9, 10):
        os.remove(os.path.join(folder, f"image_{k:05d}.png"))
    assert "image_00005.png, image_00007.png, image_00008.png and 2 more missing" in one_line_error(
        "ucf101", tmp_path, validation="test", **SMALL)
    with pytest.raises(ConfigError, match="has gaps"):  # and a reader opened directly says the same
        video_reader.FrameFolderReader(folder)
    shutil.rmtree(folder)
    os.makedirs(folder)
    assert "holds no image_00001.jpg" in one_line_error("ucf101", tmp_path, validation="test", **SMALL)


def test_gaps_in_folder_layout_frame_trees_are_counted(tmp_path):
    write_video_folder(str(tmp_path), n_per_class=(2, 1))
    frame_root = extract_frame_folders(str(tmp_path / "train"))
    extract_frame_folders(str(tmp_path / "val"))
    for name in ("jump/0", "run/1"):
        os.remove(os.path.join(frame_root, name, "image_00002.png"))
    message = one_line_error("videofolder", tmp_path, validation="test", **SMALL)
    assert message.startswith("2 frame folders are broken, e.g. frame folder ") and "jump/0 has gaps" in message


def test_a_class_without_training_videos_is_an_error(tmp_path):
    write_ucf101(str(tmp_path), groups=2, test_groups={k: (1,) for k in (1, 2, 3)})
    with open(tmp_path / "ucfTrainTestlist" / "classInd.txt", "a") as f:
        f.write("4 YoYo\n")
    message = one_line_error("ucf101", tmp_path, validation="test", **SMALL)
    assert "1 class(es) have no training videos" in message and message.split(": ")[-1].startswith("YoYo")
    write_video_folder(str(tmp_path / "f"))
    os.makedirs(tmp_path / "f" / "train" / "swim")
    assert "swim" in one_line_error("videofolder", tmp_path / "f", validation="test", **SMALL)


def test_frame_size_below_the_networks_downsampling_is_refused(ucf):
    assert MIN_FRAME_SIZE == 32  # models/video.py: stride 2 in conv1, the max-pool and layers 2, 3, 4
    message = one_line_error("ucf101", ucf[0], min_frame_size=MIN_FRAME_SIZE, **dict(SMALL, frame_size=1))
    assert message.startswith("--frame-size 1 is below 32")
    assert build_video_datasets("fake", None, min_frame_size=MIN_FRAME_SIZE, frame_size=32, clip_len=4)[3]


def test_short_videos_are_counted_for_videos_and_frame_folders(tmp_path):
    write_ucf101(str(tmp_path), groups=3, test_groups={k: (1,) for k in (1, 2, 3)})  # 24 frames each
    for use_frames in (False, True):
        if use_frames:
            extract_frame_folders(str(tmp_path / "UCF-101"))
        fits = build_video_datasets("ucf101", tmp_path, validation="test", clip_len=8, frame_step=3, frame_size=16,
                                    use_frames=use_frames)[0]  # span 22 <= 24
        assert short_videos(fits) == (0, 6, 6, 22) and short_video_warning(fits) is None
        spans = build_video_datasets("ucf101", tmp_path, validation="test", clip_len=8, frame_step=4, frame_size=16,
                                     use_frames=use_frames)[0]  # span 29 > 24: every clip loop-padded
        assert short_videos(spans).fraction == 1.0
        # video files are opened, so a sample of them; frame folders' counts are known, so all
        assert short_videos(spans, max_checked=2)[:3] == ((6, 6, 6) if use_frames else (2, 2, 6))
        assert short_video_warning(spans).startswith("6 videos, 100%, are shorter than a clip's span of 29 frames")


def test_source_line_says_frame_folders_are_read_instead_of_the_videos(tmp_path):
    write_ucf101(str(tmp_path), groups=3, test_groups={k: (1,) for k in (1, 2, 3)})
    info = build_video_datasets("ucf101", tmp_path, validation="test", **SMALL)[3]
    assert source_line(info) == f"data: videos under {tmp_path / 'UCF-101'} (6 training, 3 validation, 3 test videos)"
    extract_frame_folders(str(tmp_path / "UCF-101"))
    info = build_video_datasets("ucf101", tmp_path, validation="test", **SMALL)[3]
    assert source_line(info).startswith(f"data: frame folders under {tmp_path / 'UCF-101_jpg'} instead of the videos")


def replayed_corner_clip(frames, seed, transform):
    """The training clip as the transform made it before train_crop existed: u, a scale index, a corner index and
    the flip drawn in that order, the multi-scale corner crop, the flip, the normalization."""
    torch.manual_seed(seed)
    torch.rand(())
    scale = CROP_SCALES[int(torch.randint(5, ()))]
    position = CROP_POSITIONS[int(torch.randint(5, ()))]
    flip = torch.rand(()).item() < 0.5
    box = crop_box(frames.shape[1], frames.shape[2], scale, position)
    out = np.stack([cv2.resize(f[box[0]:box[0] + box[2], box[1]:box[1] + box[2]], (16, 16),
                               interpolation=cv2.INTER_AREA if box[2] > 16 else cv2.INTER_LINEAR) for f in frames])
    return to_normalized_tensor(out[:, :, ::-1] if flip else out)


def test_the_default_train_crop_gives_the_clips_it_gave_before(ucf):
    train = build_video_datasets("ucf101", ucf[0], **SMALL)[0]
    assert train.transform.train_crop == "corner" and train.transform.scales == CROP_SCALES
    for index in range(len(train)):
        torch.manual_seed(index)
        u, scale, position, flip = train.transform.draw()
        frames = read_clip_frames(train.samples[index][0], lambda n: train.transform.indices(n, u))
        torch.manual_seed(index)
        assert torch.equal(train[index][0], replayed_corner_clip(frames, index, train.transform))


def test_each_train_crop_does_what_it_says(ucf):
    draws = {}
    for kind in TRAIN_CROPS:
        transform = TrainClip(clip_len=4, size=16, train_crop=kind, scales=(0.5, 0.75))
        torch.manual_seed(0)
        draws[kind] = [transform.draw() for _ in range(200)]
        assert {scale for _, scale, _, _ in draws[kind]} == {0.5, 0.75}
    assert {position for _, _, position, _ in draws["corner"]} == set(CROP_POSITIONS)
    assert {position for _, _, position, _ in draws["center"]} == {"c"}
    # centre: the corner crop's draws with the position replaced, so it differs from it by the position only
    assert [(u, s, f) for u, s, _, f in draws["center"]] == [(u, s, f) for u, s, _, f in draws["corner"]]
    boxes = {crop_box(32, 40, scale, position) for _, scale, position, _ in draws["random"]}
    assert len(boxes) > 50 and all(0 <= top <= 32 - side and 0 <= left <= 40 - side for top, left, side in boxes)
    assert crop_box(32, 40, 0.5, (0.0, 0.999)) == (0, 24, 16) and crop_box(32, 40, 0.5, (0.999, 0.0)) == (16, 0, 16)
    train, _, _, info = build_video_datasets("ucf101", ucf[0], train_crop="random", crop_scales=(0.5,), **SMALL)
    assert (train.transform.train_crop, train.transform.scales, info.train_crop) == ("random", (0.5,), "random")
    assert train[0][0].shape == (3, 8, 16, 16)
    assert "train_crop is one of corner, center, random" in one_line_error("ucf101", ucf[0], train_crop="top", **SMALL)
    assert "crop_scales are fractions" in one_line_error("ucf101", ucf[0], crop_scales=(0.5, 0), **SMALL)


QUIET_READ = """
import sys
from lib.data.video_reader import read_clip_frames
from lib.errors import ConfigError
try:
    read_clip_frames(sys.argv[1], lambda n: [0])
except ConfigError as error:
    print(error, file=sys.stderr)
"""


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_corrupt_video_prints_only_the_projects_line(tmp_path, damage):
    path = write_video(str(tmp_path / "v.avi"), class_video(0, num_frames=40))
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(b"" if damage == "empty" else data[:len(data) // 3])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENCV_", "OMP_"))}
    result = subprocess.run([sys.executable, "-c", QUIET_READ, path], cwd=REPO, env=dict(env, OMP_NUM_THREADS="1"),
                            capture_output=True, text=True, timeout=120, check=False)
    # without the silencing, OpenCV's "[ WARN:0@... ] global cap.cpp ... VIDEOIO(FFMPEG) ..." line came first
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(f"cannot read video {path}")
