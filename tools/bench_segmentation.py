"""Training-step cost of the segmentor (dilated ResNet-50 + decode head) with the plain FCN head vs nonlocal heads.

    python tools/bench_segmentation.py                          # CPU, 2 threads, 512x1024, batch 1, 3 rounds
    python tools/bench_segmentation.py --heads none snl --rounds 5 --crop 256 512
    python tools/bench_segmentation.py --devices cuda --batch 2

One step = forward (decode + auxiliary head, training mode) + the training loss (cross-entropy, aux weight 0.4) +
backward, at the authors' crop 512x1024 where the head sees N = 64 x 128 = 8192 positions. Time: the median of
--rounds steps after one warm-up step each; the heads run alternately, in an order that rotates every round
(A B C, B C A, C A B, ...), so that load from other jobs hits every head alike; "vs plain" is the median of the
per-round ratios. Peak memory: the most memory allocated during one step above what was held before it (CUDA:
max_memory_allocated; CPU: the allocator's running total recorded by torch.profiler, see tools/_measure.py).
"GFLOPs / step" counts the step's matrix products and convolutions (2 per multiply-add, forward + backward) with
torch.utils.flop_counter on the meta device: exact, and unaffected by load. "largest tensor" is the largest tensor
any op created during the step, and "N x N formed" says whether any tensor had two dimensions of size N, i.e.
whether a dense affinity was formed.
"""
import argparse
import os
import statistics
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

import tools  # noqa: F401  (python tools/x.py: puts the repository root on sys.path, tools/tools.py)
from lib import NONLOCAL_BLOCKS
from lib.engine.segmentation.loss import SegLoss
from models.segmentation import build_segmentor
from tools._measure import add_measure_flags, measure_steps


def make_step(head, batch, crop, device):
    torch.manual_seed(0)
    model = build_segmentor(nl_type=head).to(device).train()
    criterion = SegLoss(0.4)
    images = torch.randn(batch, 3, *crop, device=device)
    target = torch.randint(0, 19, (batch, *crop), device=device)

    def step():
        model.zero_grad(set_to_none=True)
        loss, _ = criterion(model(images), target)
        loss.backward()
    return step


def step_flops(head, batch, crop):
    """FLOPs of one step (forward + backward) counted on the meta device: exact, and free of machine load."""
    with torch.device("meta"):
        model = build_segmentor(nl_type=head).train()
        images = torch.randn(batch, 3, *crop)
        target = torch.randint(0, 19, (batch, *crop))
    with FlopCounterMode(display=False) as counter:
        loss, _ = SegLoss(0.4)(model(images), target)
        loss.backward()
    return counter.get_total_flops()

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", nargs="+", default=["none", "snl", "nl"],
                        choices=["none"] + list(NONLOCAL_BLOCKS), help="none = the plain FCN head")
    parser.add_argument("--crop", type=int, nargs=2, default=[512, 1024], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=1)
    add_measure_flags(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True  # as the training runs without --deterministic (set_cudnn_mode)
    n = (args.crop[0] // 8) * (args.crop[1] // 8)
    heads = [None if h == "none" else h for h in args.heads]
    for device in map(torch.device, args.devices):
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{args.threads} threads"
        print(f"\n### {device.type} ({name}); crop {args.crop[0]}x{args.crop[1]}, batch {args.batch}, N = {n}, "
              f"load average before {os.getloadavg()[0]:.2f}", flush=True)
        if n <= 2560:
            print(f"note: N = {n} is not above every channel count (2560), so 'N x N formed' may be a false yes")
        steps = {h: make_step(h, args.batch, args.crop, device) for h in heads}
        times, measured = measure_steps(steps, device, args.rounds, n, args.memory)
        rows = [(h, *measured[h], step_flops(h, args.batch, args.crop)) for h in heads]
        base = times[heads[0]]
        first = rows[0]
        print(f"\n| head | s / step (median) | min s | vs {heads[0] or 'plain'} (median ratio) | GFLOPs / step | "
              f"vs {heads[0] or 'plain'} | peak MiB | largest tensor | N x N formed |")
        print("|---|---:|---:|---:|---:|---:|---:|---|---|")
        for h, median, low, peak, largest, dense, flops in rows:
            ratio = statistics.median(t / b for t, b in zip(times[h], base))
            print(f"| {h or 'plain FCN'} | {median:.2f} | {low:.2f} | {ratio:.3f}x | {flops / 1e9:.0f} | "
                  f"{flops / first[6]:.3f}x | {peak:.0f} | {'x'.join(map(str, largest))} | "
                  f"{'yes' if dense else 'no'} |")
        print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
