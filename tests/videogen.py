"""Writers of tiny video datasets in the real on-disk layouts, for tests: .avi files written by cv2.VideoWriter
(XVID or MJPG), UCF-101 and HMDB-51 trees with their split files, class-per-folder trees, and frame folders made
by decoding those videos (so that a frame folder holds exactly the frames the video decodes to).

Videos are class-dependent (a square of the class's colour moving down at a class's speed over a gray
gradient), small (24 frames of 32 x 40 by default) and written in well under a second.
"""
import os

import cv2
import numpy as np

FPS = 25


def class_video(label, num_frames=24, height=32, width=40, seed=0):
    """uint8 RGB frames (num_frames, height, width, 3): a horizontal gradient (so that flips and crops show) and
    an 8 x 8 square of the class's colour moving down 1 + label % 3 pixels per frame, starting where `seed` says.
    Up to 15 x width frames all differ, so frame indices can be told apart after decoding."""
    rng = np.random.default_rng([label, seed])
    colour = np.random.default_rng([1234, label]).integers(60, 256, size=3)
    top, left = int(rng.integers(0, height - 8)), int(rng.integers(0, width - 8))
    gradient = np.linspace(0, 120, width)[None, :, None]
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        # the gradient turns by one column per frame and brightens a step per turn: no two frames alike
        frame = np.broadcast_to(np.roll(gradient, t, axis=1) + 9 * (t // width), (height, width, 3)).copy()
        row = (top + (1 + label % 3) * t) % (height - 8)
        frame[row:row + 8, left:left + 8] = colour
        frames[t] = np.clip(frame, 0, 255)
    return frames


def write_video(path, frames, fourcc="XVID"):
    """Write uint8 RGB frames (T, H, W, 3) to `path` with cv2.VideoWriter; returns path."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), FPS, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"cv2.VideoWriter cannot write {fourcc} to {path}")
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def decode_video(path):
    """Every frame OpenCV decodes from path, uint8 RGB (T, H, W, 3)."""
    capture = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return np.stack(frames)


def write_frame_folder(folder, frames, ext=".png"):
    """folder/image_00001<ext>, ... from uint8 RGB frames (PNG: lossless, so the frames read back exactly)."""
    os.makedirs(folder, exist_ok=True)
    for k, frame in enumerate(frames):
        cv2.imwrite(os.path.join(folder, f"image_{k + 1:05d}{ext}"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return folder


def extract_frame_folders(video_root, ext=".png"):
    """Decode every video under video_root into the frame folder tree <video_root>_jpg/<...>/<video stem>/;
    returns that root."""
    frame_root = video_root.rstrip(os.sep) + "_jpg"
    for folder, _, files in os.walk(video_root):
        for name in files:
            relative = os.path.relpath(os.path.join(folder, name), video_root)
            write_frame_folder(os.path.join(frame_root, os.path.splitext(relative)[0]),
                               decode_video(os.path.join(folder, name)), ext)
    return frame_root


UCF_CLASSES = ("ApplyEyeMakeup", "Basketball", "HandstandPushups")


def write_ucf101(root, classes=UCF_CLASSES, groups=7, clips=1, fourcc="XVID", test_groups=None, **video_kw):
    """UCF-101's layout under root: UCF-101/<Class>/v_<Class>_gXX_cYY.avi and ucfTrainTestlist/ with classInd.txt
    and trainlist0k.txt / testlist0k.txt for k = 1, 2, 3. Split k tests on the groups test_groups[k] and trains on
    the others; the default, {1: (1, 2), 2: (3, 4), 3: (5, 6)} of 7 groups, is the official pattern made small
    (split k tests groups 7k-6 to 7k of 25, the last groups always train). The first class's file names spell it
    differently (HandStandPushups vs the folder HandstandPushups in the official lists), so the name match must
    ignore case. Returns {k: (train [(relative path, label)], test [...])}."""
    test_groups = test_groups or {k: (2 * k - 1, 2 * k) for k in (1, 2, 3)}
    lists = os.path.join(root, "ucfTrainTestlist")
    os.makedirs(lists, exist_ok=True)
    with open(os.path.join(lists, "classInd.txt"), "w") as f:
        f.writelines(f"{i + 1} {name}\n" for i, name in enumerate(classes))
    videos = []
    for label, name in enumerate(classes):
        spelled = name.replace("Handstand", "HandStand")
        for g in range(1, groups + 1):
            for c in range(1, clips + 1):
                relative = f"{name}/v_{spelled}_g{g:02d}_c{c:02d}.avi"
                write_video(os.path.join(root, "UCF-101", relative),
                            class_video(label, seed=100 * g + c, **video_kw), fourcc)
                videos.append((relative, label, g))
    splits = {}
    for k in (1, 2, 3):
        train = [(rel, label) for rel, label, g in videos if g not in test_groups[k]]
        test = [(rel, label) for rel, label, g in videos if g in test_groups[k]]
        with open(os.path.join(lists, f"trainlist0{k}.txt"), "w") as f:
            f.writelines(f"{rel} {label + 1}\r\n" for rel, label in train)  # the official files have CRLF
        with open(os.path.join(lists, f"testlist0{k}.txt"), "w") as f:
            f.writelines(f"{rel}\r\n" for rel, _ in test)
        splits[k] = (train, test)
    return splits


HMDB_CLASSES = ("brush_hair", "cartwheel", "smile")


def write_hmdb51(root, classes=HMDB_CLASSES, videos=3, fourcc="XVID", **video_kw):
    """HMDB-51's layout under root: hmdb51/<class>/<video>.avi and testTrainMulti_7030_splits/
    <class>_test_split{1,2,3}.txt with "<video>.avi <mark>" lines; in split k video i gets mark (i + k) % 3
    (1 train, 2 test, 0 unused). Returns {k: (train [(relative path, label)], test [...])}."""
    lists = os.path.join(root, "testTrainMulti_7030_splits")
    os.makedirs(lists, exist_ok=True)
    splits = {k: ([], []) for k in (1, 2, 3)}
    for label, name in enumerate(classes):
        files = [f"{name}_video_{i}.avi" for i in range(videos)]
        for i, file in enumerate(files):
            write_video(os.path.join(root, "hmdb51", name, file), class_video(label, seed=i, **video_kw), fourcc)
        for k in (1, 2, 3):
            marks = [(i + k) % 3 for i in range(videos)]
            with open(os.path.join(lists, f"{name}_test_split{k}.txt"), "w") as f:
                f.writelines(f"{file} {mark} \n" for file, mark in zip(files, marks))  # trailing space: as official
            for file, mark in zip(files, marks):
                if mark:
                    splits[k][mark - 1].append((f"{name}/{file}", label))
    return splits


def write_video_folder(root, classes=("jump", "run"), n_per_class=(2, 1), fourcc="MJPG", ext=".avi", **video_kw):
    """root/train/<class>/<i><ext> and root/val/<class>/<i><ext>; n_per_class = (train, val) videos per class."""
    for part, count, seed in (("train", n_per_class[0], 0), ("val", n_per_class[1], 50)):
        for label, name in enumerate(classes):
            for i in range(count):
                write_video(os.path.join(root, part, name, f"{i}{ext}"), class_video(label, seed=seed + i, **video_kw),
                            fourcc)
    return root
