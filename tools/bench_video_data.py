"""Clip-loading throughput of the video data pipeline: clips per second per loader worker, from .avi files and
from frame folders.

    python tools/bench_video_data.py                       # generated UCF-101-like videos, 1 process
    python tools/bench_video_data.py --codec MJPG --frames 300 --clips 60
    python tools/bench_video_data.py --dataset ucf101 --data-dir data/ucf101 --split 1    # your own data
    python tools/bench_video_data.py --workers 4           # also through a DataLoader with 4 workers

Without --data-dir it writes --videos videos of --frames frames at --height x --width (UCF-101's 320 x 240 by
default, 25 fps) with cv2.VideoWriter into a temporary folder, and their frame folders (JPEG, quality 95), then
times lib.data.video's datasets reading them: `train` (random temporal crop, multi-scale corner crop, flip),
`val` (centre clip) and `test` (--test-clips clips per video; counted as that many clips). One process is one
worker's throughput: clips/s per worker. "whole video" is the cost of decoding every frame of a video, what the
reader avoids by stopping at the last needed frame (and seeking when the clip starts far in).
Numbers depend on the CPU and on other load: run it on an idle machine for numbers to quote.
Exit status: 0, or 2 (one line on stderr) for a missing or unreadable dataset.
"""
import argparse
import os
import sys
import tempfile
import time

import cv2
import numpy as np
import torch

import tools  # noqa: F401  (python tools/x.py: puts the repository root on sys.path, tools/tools.py)
from lib.data import build_loaders
from lib.data.samplers import SeededAugmentation
from lib.data.video import build_video_datasets
from lib.errors import ConfigError
from tools._frames import write_frames


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--dataset", default="videofolder", help="dataset name with --data-dir (ucf101, hmdb51, "
                        "kinetics, videofolder); without --data-dir generated videos are used")
    parser.add_argument("--data-dir", default=None, help="an existing dataset to read instead of generated videos")
    parser.add_argument("--split", type=int, default=1, help="split for ucf101 / hmdb51")
    parser.add_argument("--videos", type=int, default=6, help="generated videos")
    parser.add_argument("--frames", type=int, default=150, help="frames per generated video (UCF-101: ~190)")
    parser.add_argument("--height", type=int, default=240, help="generated frame height")
    parser.add_argument("--width", type=int, default=320, help="generated frame width")
    parser.add_argument("--codec", default="XVID", choices=["XVID", "MJPG"], help="fourcc of generated videos")
    parser.add_argument("--clip-len", type=int, default=16)
    parser.add_argument("--frame-step", type=int, default=1)
    parser.add_argument("--frame-size", type=int, default=112)
    parser.add_argument("--test-clips", type=int, default=10)
    parser.add_argument("--clips", type=int, default=40, help="training / validation clips timed per source")
    parser.add_argument("--workers", type=int, default=0, help="also time a DataLoader with this many workers "
                        "(0: only the one-process measurement)")
    return parser


def write_videos(root, args):
    """root/train/<class>/<i>.avi, root/val/<class>/<i>.avi (videos / 2 classes) and the *_jpg frame trees."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(args.height // 8, args.width // 8, 3), dtype=np.uint8)
    base = cv2.resize(base, (args.width, args.height), interpolation=cv2.INTER_LINEAR)
    for k in range(args.videos):
        part, label = ("train", "val")[k % 2], f"class{(k // 2) % 2}"
        path = os.path.join(root, part, label, f"{k}.avi")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*args.codec), 25, (args.width, args.height))
        for t in range(args.frames):  # a textured background panning 2 pixels per frame: realistic compression
            writer.write(np.roll(base, 2 * t + 7 * k, axis=1))
        writer.release()
        frame_dir = os.path.join(root, part + "_jpg", label, str(k))
        os.makedirs(frame_dir, exist_ok=True)
        write_frames(path, frame_dir)


def clips_per_second(dataset, count, train):
    """(clips/s, ms per clip) reading `count` items in one process (a test item holds test_clips clips)."""
    wrapped = SeededAugmentation(dataset)
    start = time.perf_counter()
    clips = 0
    for k in range(count):
        item = wrapped[(k % len(dataset), k)] if train else dataset[k % len(dataset)]
        clips += item[0].shape[0] if item[0].dim() == 5 else 1
    seconds = time.perf_counter() - start
    return clips / seconds, 1000 * seconds / clips


def loader_clips_per_second(train_set, val_set, workers, count):
    loader, _, sampler = build_loaders(train_set, val_set, batch_size=4, workers=workers, seed=0)
    clips, start = 0, None
    for epoch in range(10 ** 6):
        sampler.set_epoch(epoch)
        for clip, _ in loader:
            if start is None:  # the first batch pays for starting the workers
                start = time.perf_counter()
                continue
            clips += len(clip)
            if clips >= count:
                return clips / (time.perf_counter() - start)


def whole_video_ms(path):
    start = time.perf_counter()
    capture = cv2.VideoCapture(path)
    frames = 0
    while capture.grab():
        capture.retrieve()
        frames += 1
    return 1000 * (time.perf_counter() - start), frames


def bench(args, data_dir, name):
    # validation 'test': only the reading speed matters, and it works for every layout (no videos held out)
    options = dict(split=args.split, clip_len=args.clip_len, frame_step=args.frame_step, frame_size=args.frame_size,
                   test_clips=args.test_clips, validation="test")
    print(f"{'source':<8} {'mode':<6} {'clips/s/worker':>15} {'ms/clip':>9}")
    sources = {}
    for source in ("videos", "frames"):
        try:
            train, val, test, _ = build_video_datasets(name, data_dir, use_frames=source == "frames", **options)
        except ConfigError as error:
            if source == "frames" and "frame folders asked for" in str(error):
                print(f"(no frame folders: {error})")
                continue
            raise
        sources[source] = (train, val)
        for mode, dataset, count in (("train", train, args.clips), ("val", val, args.clips),
                                     ("test", test, max(1, args.clips // args.test_clips))):
            rate, ms = clips_per_second(dataset, count, mode == "train")
            print(f"{source:<8} {mode:<6} {rate:>15.1f} {ms:>9.2f}", flush=True)
        if args.workers:
            rate = loader_clips_per_second(train, val, args.workers, args.clips)
            print(f"{source:<8} {'loader':<6} {rate / args.workers:>15.1f} {'':>9}  ({args.workers} workers, "
                  f"{rate:.1f} clips/s in all)", flush=True)
    if "videos" in sources:
        path = sources["videos"][0].samples[0][0]
        ms, frames = whole_video_ms(path)
        print(f"whole video: {ms:.1f} ms to decode all {frames} frames of {path}")


def main(args):
    torch.set_num_threads(1)
    if args.data_dir:
        if not os.path.isdir(args.data_dir):
            raise ConfigError(f"data directory {args.data_dir} does not exist")
        bench(args, args.data_dir, args.dataset)
        return
    with tempfile.TemporaryDirectory() as root:
        write_videos(root, args)
        print(f"{args.videos} generated {args.codec} videos of {args.frames} frames at {args.width}x{args.height}; "
              f"clips of {args.clip_len} frames (step {args.frame_step}) at {args.frame_size}x{args.frame_size}")
        bench(args, root, "videofolder")


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
