"""Decoding the frames of one clip: video files through OpenCV (its bundled FFmpeg), or frame folders.

Both readers answer two questions: how many frames a video has (`num_frames`), and the frames at given indices
(`read(indices)` -> uint8 array (len(indices), H, W, 3), RGB). Indices may repeat and need not be sorted (loop
padding repeats frames); each distinct frame is decoded once.

Video files are read sequentially up to the last needed frame (grab() skips the unneeded ones without the colour
conversion), after a seek when the first needed frame lies far into the video: a 16-frame clip never decodes a
whole long video. OpenCV's frame count comes from the container and can be wrong (e.g. dropped frames in AVI,
estimated durations in MKV/WebM): when fewer frames decode than it promised, the reader counts what really
decodes and the caller samples again with the true count (`ShortRead`, read_clip_frames). A file that cannot be
opened, has no decodable frame, or is much shorter than its header says (a truncated download) is a ConfigError
naming it, on one line, also from a DataLoader worker (lib/errors.py). OpenCV's and FFmpeg's own log lines
(`[ WARN ... VIDEOIO(FFMPEG) ... ]`, `[mpeg4 @ ...] ...`) are silenced while we open and read, so that line is the
only one a broken video prints.
"""
import contextlib
import os
import re

# FFmpeg's own messages go to stderr unless OpenCV is told its log level, which it reads once, when it first opens
# a capture: set it before that (quiet; a user's own setting wins).
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
import cv2  # noqa: E402
import numpy as np

from lib.errors import ConfigError

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".m4v")
# Containers whose frame count is written in the file: a large shortfall there means a damaged file.
COUNTED_CONTAINERS = (".avi", ".mp4", ".mov", ".m4v")
# Frame folders, the 3D-ResNets form: image_00001.jpg, image_00002.jpg, ... (PNG accepted too: lossless).
FRAME_PATTERN = "image_{:05d}"
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Seek (instead of grabbing forward) when the first needed frame is at least this far in.
SEEK_MIN_FRAMES = 48


class ShortRead(Exception):
    """The video holds fewer frames than the indices asked for assumed; num_frames is the true count."""

    def __init__(self, num_frames):
        super().__init__(num_frames)
        self.num_frames = num_frames


@contextlib.contextmanager
def _quiet_opencv():
    """OpenCV's own warnings for a file it cannot open or decode say less than our ConfigError and would print
    before it: silence them for our calls only, restoring the caller's level after."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is None:  # a build without the logging module prints nothing to silence here
        yield
        return
    previous = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        logging.setLogLevel(previous)


def _unreadable(path, reason):
    return ConfigError(f"cannot read video {path}: {reason} (replace or remove the file)")


class VideoFileReader:
    """Frames of a video file. num_frames: the container's frame count (counted by decoding when the container
    has none); after a ShortRead, the true count."""

    def __init__(self, path, seek_min=SEEK_MIN_FRAMES):
        self.path = path
        self.seek_min = seek_min
        if not os.path.isfile(path):
            raise ConfigError(f"video {path} does not exist (the split file names it)")
        with _quiet_opencv():
            self.capture = self._open(path)
        if not self.capture.isOpened():
            reason = "empty file" if os.path.getsize(path) == 0 else "not a video OpenCV can open"
            raise _unreadable(path, reason)
        self.claimed = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.num_frames = self.claimed
        self.position = 0  # index of the frame the next grab() decodes
        if self.num_frames <= 0:  # no count in the container: count by decoding, once
            with _quiet_opencv():
                self._accept_count(self._count_by_decoding())

    @staticmethod
    def _open(path):
        """FFmpeg with one decoding thread (the loader's workers are the parallelism); any backend otherwise."""
        capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
        return capture if capture.isOpened() else cv2.VideoCapture(path)

    def close(self):
        self.capture.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _count_by_decoding(self):
        """Frames that decode, counted from the start; leaves the capture at frame 0."""
        self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
        count = 0
        while self.capture.grab():
            count += 1
        self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
        self.position = 0
        return count

    def _accept_count(self, count):
        """Record that `count` frames really decode; refuse files where that is far below the header's count."""
        if count == 0:
            raise _unreadable(self.path, "no frame decodes (empty or corrupt video)")
        promised = self.claimed
        if (os.path.splitext(self.path)[1].lower() in COUNTED_CONTAINERS and promised > 0
                and count < 0.9 * promised - 2):
            raise _unreadable(self.path, f"truncated or corrupt: the header promises {promised} frames, "
                                         f"only {count} decode")
        self.num_frames = count
        return count

    def read(self, indices):
        """uint8 RGB frames (len(indices), H, W, 3); ShortRead if an index is past the frames that decode."""
        with _quiet_opencv():  # a corrupt packet makes OpenCV / FFmpeg print before our own line
            return self._read(indices)

    def _read(self, indices):
        wanted = sorted(set(int(i) for i in indices))
        if wanted[0] < 0:
            raise IndexError(f"negative frame index {wanted[0]}")
        position = self.position
        if wanted[0] - position >= self.seek_min or wanted[0] < position:
            # Far ahead (seek), or behind us (restart from the beginning unless far in, then seek).
            target = wanted[0] if wanted[0] >= self.seek_min else 0
            self.capture.set(cv2.CAP_PROP_POS_FRAMES, target)
            if int(self.capture.get(cv2.CAP_PROP_POS_FRAMES)) != target:  # seek refused: go from the start
                self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                target = 0
            position = target
        start = position
        frames = {}
        for index in wanted:
            while position < index:
                if not self.capture.grab():
                    raise self._short(position, start)
                position += 1
            ok, frame = self.capture.read()
            if not ok:
                raise self._short(position, start)
            position += 1
            frames[index] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        self.position = position
        return np.stack([frames[int(i)] for i in indices])

    def _short(self, position, start):
        """The video ended at `position`: learn the true count (by counting from the start if we got here by a
        seek) and say so."""
        count = position if start == 0 else self._count_by_decoding()
        self.position = 0
        self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
        return ShortRead(self._accept_count(count))


class FrameFolderReader:
    """Frames of a folder holding image_00001.jpg ... image_NNNNN.jpg (numbered from 1, without gaps)."""

    def __init__(self, folder):
        self.folder = folder
        try:
            names = os.listdir(folder)
        except OSError as error:
            raise ConfigError(f"cannot read frame folder {folder}: {error.strerror or error} (extract the "
                              f"video's frames there, or remove the frame root to read the videos)") from None
        self.num_frames, self.extension = frame_folder_count(folder, names)

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def frame_path(self, index):
        return os.path.join(self.folder, FRAME_PATTERN.format(index + 1) + self.extension)

    def read(self, indices):
        frames = {}
        for index in sorted(set(int(i) for i in indices)):
            if not 0 <= index < self.num_frames:
                raise IndexError(f"frame {index} of {self.folder}, which has {self.num_frames}")
            path = self.frame_path(index)
            image = cv2.imread(path, cv2.IMREAD_COLOR)
            if image is None:
                raise ConfigError(f"cannot read frame {path}: missing, empty or not an image (extract the "
                                  f"video's frames again)")
            frames[index] = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        return np.stack([frames[int(i)] for i in indices])


FRAME_NAME = re.compile(r"image_(\d+)(\.(?:jpg|jpeg|png))$", re.IGNORECASE)


def frame_folder_count(folder, names):
    """(frame count, extension) of a frame folder from its listing `names`; a ConfigError naming the folder when
    it holds no frames or its numbers have gaps (a clip reading a missing frame would otherwise fail, or silently
    shift every later frame). Only names are looked at: no image is opened."""
    numbers, extension = set(), None
    for name in names:
        match = FRAME_NAME.match(name)
        if match:
            numbers.add(int(match.group(1)))
            extension = extension or match.group(2)
    if not numbers:
        raise ConfigError(f"frame folder {folder} holds no image_00001.jpg ... frames (extract the video's frames "
                          f"there, or remove the frame root to read the videos)")
    last = max(numbers)
    if len(numbers) != last or min(numbers) != 1:  # numbered from 1 without gaps <=> {1, ..., count}
        missing = sorted(set(range(1, last + 1)) - numbers)
        shown = ", ".join(FRAME_PATTERN.format(n) + extension for n in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ConfigError(f"frame folder {folder} has gaps: {shown}{more} missing of image_00001 ... "
                          f"{FRAME_PATTERN.format(last)} (extract the video's frames again)")
    return last, extension


def open_video(path):
    """A reader for `path`: a frame folder if path is a directory, else a video file."""
    return FrameFolderReader(path) if os.path.isdir(path) else VideoFileReader(path)


def read_clip_frames(path, choose_indices, true_counts=None):
    """frames = read_clip_frames(path, choose_indices): choose_indices(num_frames) -> frame indices (a list or a
    list of lists); the returned uint8 array has the same nesting, (..., H, W, 3).

    The indices are chosen with the container's frame count; only if they reach past the frames that really
    decode are they chosen again with the true count. true_counts (path -> true count, filled in here) saves the
    failed read next time without changing which frames are returned: the clip is a function of the video and
    choose_indices alone, whichever process (DataLoader worker) read the video before.
    """
    true_counts = {} if true_counts is None else true_counts
    with open_video(path) as reader:
        indices = np.asarray(choose_indices(reader.num_frames))
        known = true_counts.get(path)
        if known is not None and indices.max() >= known:
            indices = np.asarray(choose_indices(known))
        try:
            frames = reader.read(indices.reshape(-1))
        except ShortRead as short:
            true_counts[path] = short.num_frames
            indices = np.asarray(choose_indices(short.num_frames))
            frames = reader.read(indices.reshape(-1))
    return frames.reshape(indices.shape + frames.shape[1:])
