"""Training-step cost of a video backbone plain vs with one space-time nonlocal block (docs/classification.md,
"Models").

    python tools/bench_video.py                               # r3d-18, 16 x 112 x 112, batch 2, CPU, 2 threads
    python tools/bench_video.py --blocks snl nl --rounds 5
    python tools/bench_video.py --backbone resnet3d --arch 50 --nl-layer 1 --devices cuda --batch 8

Default: torchvision's r3d-18 on clips of 16 x 112 x 112, one block after layer2's first residual block, where it
sees C = 128 channels (C' = 64) at N = 8 x 28 x 28 = 6272 positions: a dense N x N affinity would hold 39M
entries (157 MB in float32) per clip. One step = forward (training mode) + cross-entropy + backward. Time: the
median of --rounds steps after one warm-up step each; the models run alternately in an order that rotates every
round, so load from other jobs hits all of them alike; "vs plain" is the median of the per-round ratios. Peak
memory: the most memory allocated during one step above what was held before it (CUDA: max_memory_allocated;
CPU: the allocator's running total recorded by torch.profiler, see tools/_measure.py). "GFLOPs / step" counts
matrix products and convolutions (2 per multiply-add, forward + backward) on the meta device: exact, and free of
load. "N x N formed" says whether any op created a tensor with two dimensions of size N (a dense affinity).
Exit status 0; the numbers are printed, not judged.
"""
import argparse
import math
import os
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import tools  # noqa: F401  (python tools/x.py: puts the repository root on sys.path, tools/tools.py)
from lib import NONLOCAL_BLOCKS
from models import build_model
from models.video import VIDEO_BACKBONES
from tools._measure import add_measure_flags, measure_steps

NUM_CLASSES = 101  # UCF-101


def build(args, nl_type):
    return build_model(args.backbone, args.arch, NUM_CLASSES, nl_type=nl_type, nl_layer=args.nl_layer)


def make_step(args, nl_type, device):
    torch.manual_seed(0)
    model = build(args, nl_type).to(device).train()
    clips = torch.randn(args.batch, 3, *args.clip, device=device)
    labels = torch.randint(0, NUM_CLASSES, (args.batch,), device=device)

    def step():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(clips), labels).backward()
    return step


def step_flops(args, nl_type):
    with torch.device("meta"):
        model = build(args, nl_type).train()
        clips = torch.empty(args.batch, 3, *args.clip)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(clips), torch.zeros(args.batch, dtype=torch.long, device="meta")).backward()
    return counter.get_total_flops()


def block_positions(args):
    """N seen by the block, from a forward on the meta device."""
    with torch.device("meta"):
        model = build(args, "snl").eval()
    seen = []
    block = model.get_submodule(model.nonlocal_paths[0])
    handle = block.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].shape))
    with torch.no_grad():
        model(torch.empty(1, 3, *args.clip, device="meta"))
    handle.remove()
    return seen[0][1], math.prod(seen[0][2:])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", nargs="+", default=["none", "snl", "nl", "cgnl", "a2"],
                        choices=["none"] + [k for k in NONLOCAL_BLOCKS if k != "cc"], help="none = the plain model")
    parser.add_argument("--backbone", default="r3d", choices=VIDEO_BACKBONES)
    parser.add_argument("--arch", default="18")
    parser.add_argument("--nl-layer", default="2", choices=("1", "2", "3"),
                        help="2: after layer2's first residual block (default); 1 / 3: in layer3 (nl_nums 1)")
    parser.add_argument("--clip", type=int, nargs=3, default=[16, 112, 112], metavar=("T", "H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    add_measure_flags(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True  # as the training runs without --deterministic (set_cudnn_mode)
    channels, n = block_positions(args)
    blocks = [None if b == "none" else b for b in args.blocks]
    for device in map(torch.device, args.devices):
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{args.threads} threads"
        print(f"\n### {device.type} ({where}); {args.backbone}-{args.arch}, clips {'x'.join(map(str, args.clip))}, "
              f"batch {args.batch}, block at nl_layer {args.nl_layer}: C = {channels}, N = {n}; "
              f"load average before {os.getloadavg()[0]:.2f}", flush=True)
        if n <= 2048:
            print(f"note: N = {n} is not above every channel count (2048), so 'N x N formed' may be a false yes")
        steps = {b: make_step(args, b, device) for b in blocks}
        times, measured = measure_steps(steps, device, args.rounds, n, args.memory)
        rows = [(b, *measured[b], step_flops(args, b)) for b in blocks]
        base_times, (_, _, _, base_peak, _, _, base_flops) = times[blocks[0]], rows[0]
        label = blocks[0] or "plain"
        print(f"\n| model | s / step (median) | min s | vs {label} | GFLOPs / step | vs {label} | peak MiB | "
              f"vs {label} | largest tensor | N x N formed |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
        for b, median, low, peak, largest, dense, flops in rows:
            ratio = statistics.median(t / p for t, p in zip(times[b], base_times))
            memory = f"{peak:.0f} | {peak / base_peak:.3f}x" if args.memory else "- | -"
            shape = "x".join(map(str, largest))
            print(f"| {b or 'plain'} | {median:.3f} | {low:.3f} | {ratio:.3f}x | {flops / 1e9:.1f} | "
                  f"{flops / base_flops:.3f}x | {memory} | {shape} | {'yes' if dense else 'no'} |")
        print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
