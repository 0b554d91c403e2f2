#!/usr/bin/env python3
"""A re-ID query and its top-10 gallery images, for a checkpoint of train_reid.py: is the right person found?

    python tools/retrieval.py save_model/market1501/reid50/snl/model_best.pth.tar --query 0
    python tools/retrieval.py CHECKPOINT --query 17 --top-k 20 --output out/q17.png
    python tools/retrieval.py CHECKPOINT --query-file 0001_c1s1_001051_00.jpg --data-dir data
    python tools/retrieval.py VIDEO_CHECKPOINT --query 3         # MARS / iLIDS-VID / PRID: tracklets

One PNG row: the query (blue frame), then the gallery entries it ranks first, nearest first, each in a green
frame (the query's identity) or red (another identity, distractors included), its distance under it. The ranking
is the protocol's (lib/engine/reid/evaluation.py): features from the model in eval mode (after the BNNeck),
distances on L2-normalized features (the run's --distance), a stable sort, and the gallery entries of the query's
identity seen by the query's camera removed (they are not counted by the protocol, so they are not shown), as are
junk entries (pid -1). The query and gallery are the run's dataset (--dataset / --data-dir override) at the run's
image size. A query file (--query-file) is read and resized as the query set is; its identity and camera come from
a <pid>_c<camera> name (then its own gallery entries are removed as for a query of the set), otherwise frames
are grey (unknown identity) and nothing is removed. Video checkpoints rank tracklets (the run's test sampling)
and show each tracklet's middle frame. Without --output the PNG goes next to the checkpoint:
<checkpoint name>_retrieval_<dataset>_q<index>.png (or _<file name> for a query file). Re-ranking is not applied.
Every gallery feature is computed for each call (Market-1501: 15,913 images, minutes on a CPU; --device cuda).
"""
import argparse
import os
import sys

import cv2
import numpy as np
import torch

import tools  # noqa: F401  (python tools/x.py: puts the repository root on sys.path, tools/tools.py)
from lib.data.reid import NAME_PATTERN, read_image
from lib.data.reid_sets import build_reid_datasets
from lib.engine.cli import OneLineParser
from lib.engine.reid.evaluation import JUNK_PID, pairwise_distances
from lib.errors import ConfigError
from models.reid import tracklet_feature
from tools._outputs import check_output_file, checkpoint_stem, main_reporting_errors, run_folder, write_image
from tools._task_checkpoint import load_task_model, progress

# BGR frame colours: right identity, wrong identity, unknown identity (a query file without a parsable name), query.
GREEN, RED, GREY, BLUE = (40, 180, 40), (40, 40, 220), (150, 150, 150), (200, 120, 0)
BORDER, GAP, CAPTION = 4, 6, 18  # pixels: frame width, white gap between images, caption strip height
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")  # what cv2.imwrite writes everywhere


def rank_gallery(distances, q_pid, q_camid, g_pids, g_camids, top_k=None):
    """[(gallery index, distance, same identity)] of the query's ranked gallery, as the protocol scores it: a
    stable sort by distance (ties keep gallery order), without the entries of the query's pid and camera and
    without junk (pid -1); the first top_k (None: all). q_pid None = unknown identity (nothing removed, same
    identity None)."""
    distances = np.asarray(distances, dtype=np.float64).reshape(-1)
    g_pids, g_camids = np.asarray(g_pids).reshape(-1), np.asarray(g_camids).reshape(-1)
    order = np.argsort(distances, kind="stable")
    keep = g_pids[order] != JUNK_PID
    if q_pid is not None:
        keep &= ~((g_pids[order] == q_pid) & (g_camids[order] == q_camid))
    ranked = order[keep][:top_k]
    return [(int(i), float(distances[i]), None if q_pid is None else bool(g_pids[i] == q_pid)) for i in ranked]


def features(model, dataset, video, batch_size, device):
    """(N, D) eval features of every item of a query / gallery set (tracklets: their clips' mean feature)."""
    out = []
    with torch.no_grad():
        if video:
            for index in range(len(dataset)):
                out.append(tracklet_feature(model, dataset[index][0].to(device))[None])
        else:
            for start in range(0, len(dataset), batch_size):
                batch = torch.stack([dataset[i][0] for i in range(start, min(start + batch_size, len(dataset)))])
                out.append(model(batch.to(device)))
    return torch.cat(out).float().cpu()


def display_image(dataset, index, video, height, width):
    """The item as uint8 BGR (height, width, 3): an image, or a tracklet's middle frame, unnormalized."""
    key = dataset.samples[index][0]
    pixels = dataset.read(key[len(key) // 2] if video else key)  # uint8 (3, h, w) RGB
    return resize(pixels.permute(1, 2, 0).numpy()[:, :, ::-1], height, width)


def resize(rgb_or_bgr, height, width):
    return cv2.resize(np.ascontiguousarray(rgb_or_bgr), (width, height), interpolation=cv2.INTER_LINEAR)


def framed(image, colour, caption):
    """image with a coloured frame of BORDER pixels and a white caption strip below."""
    out = cv2.copyMakeBorder(image, BORDER, BORDER, BORDER, BORDER, cv2.BORDER_CONSTANT, value=colour)
    strip = np.full((CAPTION, out.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, caption, (2, CAPTION - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([out, strip], axis=0)


def picture(query, ranked_images, ranked):
    """[query | ranked gallery images] in one row, GAP white pixels apart (twice after the query)."""
    panels = [framed(query, BLUE, "query")]
    for image, (_, distance, same) in zip(ranked_images, ranked):
        colour = GREY if same is None else (GREEN if same else RED)
        panels.append(framed(image, colour, f"{distance:.3f}"))
    gap = np.full((panels[0].shape[0], GAP, 3), 255, np.uint8)
    row = [panels[0], gap, gap]
    for panel in panels[1:]:
        row += [panel, gap]
    return np.concatenate(row[:-1], axis=1)


def get_parser():
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a checkpoint of train_reid.py")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--query", type=int, metavar="I", help="index into the query set")
    which.add_argument("--query-file", "--query_file", dest="query_file", metavar="IMAGE", help="an image file "
                       "(image checkpoints); a <pid>_c<camera>... name gives its identity and camera")
    parser.add_argument("--top-k", "--top_k", dest="top_k", type=int, default=10, help="gallery entries shown "
                        "(default 10)")
    parser.add_argument("--dataset", help="re-ID dataset of the query / gallery (default: the run's)")
    parser.add_argument("--data-dir", "--data_dir", dest="data_dir", help="its root (default: the run's)")
    parser.add_argument("--distance", choices=("euclidean", "cosine"), help="default: the run's, else euclidean")
    parser.add_argument("--display-height", dest="display_height", type=int, default=256,
                        help="height of each image in pixels; widths follow the run's image size (default 256)")
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=64)
    parser.add_argument("--output", metavar="FILE.png", help="the picture (default: next to the checkpoint)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    return parser


def main(argv=None):
    return main_reporting_errors("retrieval.py", run, get_parser().parse_args(argv))


def default_output(args, dataset):
    what = f"q{args.query}" if args.query is not None else os.path.splitext(os.path.basename(args.query_file))[0]
    return os.path.join(run_folder(args.checkpoint),
                        f"{checkpoint_stem(args.checkpoint)}_retrieval_{dataset}_{what}.png")


def file_identity(path, dataset):
    """(pid, camid) from a <pid>_c<camera> file name (camera numbering as the dataset's reader), else (None, None)."""
    match = NAME_PATTERN.match(os.path.basename(path))
    if match is None:
        return None, None
    return int(match.group(1)), int(match.group(2)) - (0 if dataset == "reidfolder" else 1)


def run(args):
    if args.top_k < 1 or args.display_height < 8 or args.batch_size < 1:
        raise ConfigError("--top-k and --batch-size must be positive and --display-height at least 8")
    if args.output:  # before any computation
        check_output_file("--output", args.output, IMAGE_SUFFIXES)
    model, run_args, checkpoint = load_task_model(args.checkpoint, "reid", args.device)
    dataset = args.dataset or run_args.get("dataset")
    if not dataset:
        raise ConfigError(f"{args.checkpoint} does not say which dataset it was trained on: pass --dataset")
    output = args.output or default_output(args, dataset)
    check_output_file("--output", output, IMAGE_SUFFIXES)
    height, width = (int(v) for v in run_args.get("img_size") or (256, 128))
    video = bool(getattr(model, "video", False))
    if video and args.query_file:
        raise ConfigError("a video checkpoint ranks tracklets: choose the query with --query (its index)")
    _, query_set, gallery_set, _ = build_reid_datasets(
        dataset, args.data_dir or run_args.get("data_dir") or "./data", img_size=(height, width),
        seq_len=run_args.get("seq_len") or 4, test_sampling=run_args.get("test_sampling") or "dense",
        split=run_args.get("split") or 0)
    shown_width = max(1, round(args.display_height * width / height))
    if args.query is not None:
        if not 0 <= args.query < len(query_set):
            raise ConfigError(f"--query {args.query} out of range: the {dataset} query set has {len(query_set)} "
                              f"{'tracklets' if video else 'images'} (0..{len(query_set) - 1})")
        q_feature = features(model, torch.utils.data.Subset(query_set, [args.query]), video, 1, args.device)
        q_pid, q_camid = query_set.pids[args.query], query_set.camids[args.query]
        q_image = display_image(query_set, args.query, video, args.display_height, shown_width)
    else:
        pixels = read_image(args.query_file) if os.path.isfile(args.query_file) else None
        if pixels is None:
            raise ConfigError(f"query file not found: {args.query_file}")
        q_feature = features(model, [(query_set.transform(pixels),)], False, 1, args.device)
        q_pid, q_camid = file_identity(args.query_file, dataset)
        q_image = resize(pixels.permute(1, 2, 0).numpy()[:, :, ::-1], args.display_height, shown_width)
    g_features = features(model, gallery_set, video, args.batch_size, args.device)
    distance = args.distance or run_args.get("distance") or "euclidean"
    distances = pairwise_distances(q_feature, g_features, distance)[0].numpy()
    ranked = rank_gallery(distances, q_pid, q_camid, gallery_set.pids, gallery_set.camids, args.top_k)
    images = [display_image(gallery_set, i, video, args.display_height, shown_width) for i, _, _ in ranked]
    write_image(output, picture(q_image, images, ranked))
    hits = "".join("?" if same is None else ("+" if same else "-") for _, _, same in ranked)
    print(f"wrote {output} ({dataset} query {args.query if args.query is not None else args.query_file}, pid "
          f"{q_pid if q_pid is not None else 'unknown'}; top {len(ranked)} of {len(gallery_set)} gallery entries "
          f"by {distance} distance: {hits} (+ right, - wrong identity); {progress(checkpoint)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
