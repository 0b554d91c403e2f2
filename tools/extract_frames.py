"""Decode a video dataset into frame folders (3D-ResNets' form), which lib.data.video then reads instead.

    python tools/extract_frames.py --dataset ucf101 --data-dir data/ucf101            # UCF-101 -> UCF-101_jpg
    python tools/extract_frames.py --dataset hmdb51 --data-dir data/hmdb51 --jobs 8
    python tools/extract_frames.py --dataset kinetics --data-dir data/kinetics --short-side 240

Every video <root>/<...>/<name>.<ext> becomes the folder <root>_jpg/<...>/<name>/ of image_00001.jpg,
image_00002.jpg, ... (every frame OpenCV decodes, JPEG quality --quality), where root is UCF-101 (ucf101),
hmdb51 (hmdb51), or train and val (kinetics, videofolder). --short-side N first resizes each frame so that its
shorter side is N (3D-ResNets' Kinetics frames have a height of 240); the default keeps the size. The tree is
built in <root>_jpg.partial and renamed to <root>_jpg when every video is done, so training never sees half a
tree; run the same command again to continue an interrupted extraction (finished videos are kept).
Whether frame folders are faster than the videos depends on the codec, the frame size and the disk: measure
with tools/bench_video_data.py --data-dir before and after.
Exit status: 0 when done; 1 if some videos could not be decoded (listed, one line each; the tree stays
.partial); 2 for a missing dataset or a bad option.
"""
import argparse
import os
import shutil
import sys
from multiprocessing import Pool

import tools  # noqa: F401  (python tools/x.py: puts the repository root on sys.path, tools/tools.py)
from lib.data.video import FRAME_ROOT_SUFFIX
from lib.data.video_reader import VIDEO_EXTENSIONS
from tools._frames import write_frames

VIDEO_ROOTS = {"ucf101": ["UCF-101"], "hmdb51": ["hmdb51"], "kinetics": ["train", "val"],
               "videofolder": ["train", "val"]}


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--dataset", required=True, choices=sorted(VIDEO_ROOTS))
    parser.add_argument("--data-dir", required=True, help="the folder holding the dataset (as for training)")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality, 1-100 (default 95)")
    parser.add_argument("--short-side", type=int, default=0, help="resize frames to this shorter side first "
                        "(0: keep the size)")
    parser.add_argument("--jobs", type=int, default=1, help="processes decoding videos in parallel")
    return parser


def extract(task):
    """Decode one video into its folder (written under a temporary name, then renamed); None or an error line."""
    video, folder, quality, short_side = task
    if os.path.isdir(folder):
        return None
    temporary = folder + ".tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    os.makedirs(temporary)
    if write_frames(video, temporary, quality, short_side) == 0:
        shutil.rmtree(temporary)
        return f"cannot decode {video}: no frame (replace or remove the file)"
    os.rename(temporary, folder)
    return None


def tasks(video_root, partial_root, args):
    for folder, _, files in os.walk(video_root):
        for name in sorted(files):
            if name.lower().endswith(VIDEO_EXTENSIONS):
                relative = os.path.relpath(os.path.join(folder, name), video_root)
                target = os.path.join(partial_root, os.path.splitext(relative)[0])
                os.makedirs(os.path.dirname(target), exist_ok=True)
                yield os.path.join(folder, name), target, args.quality, args.short_side


def main(args):
    if not 1 <= args.quality <= 100 or args.short_side < 0 or args.jobs < 1:
        print("error: need --quality in 1..100, --short-side >= 0 and --jobs >= 1", file=sys.stderr)
        return 2
    roots = [os.path.join(args.data_dir, name) for name in VIDEO_ROOTS[args.dataset]]
    missing = [root for root in roots if not os.path.isdir(root)]
    if missing:
        print(f"error: {missing[0]} does not exist: the {args.dataset} videos go there (docs/video_data.md)",
              file=sys.stderr)
        return 2
    failures = 0
    for root in roots:
        final = root.rstrip(os.sep) + FRAME_ROOT_SUFFIX
        if os.path.isdir(final):
            print(f"{final} exists: skipped (remove it to extract again)")
            continue
        partial = final + ".partial"
        work = list(tasks(root, partial, args))
        done = 0
        with Pool(args.jobs) as pool:
            for error in pool.imap_unordered(extract, work, chunksize=4):
                done += 1
                if error:
                    failures += 1
                    print(error, file=sys.stderr)
                if done % 200 == 0 or done == len(work):
                    print(f"{root}: {done}/{len(work)} videos", flush=True)
        if failures:
            print(f"{failures} video(s) failed: {partial} kept; fix them and run again", file=sys.stderr)
            return 1
        os.rename(partial, final)
        print(f"{final}: frame folders of {len(work)} videos")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
