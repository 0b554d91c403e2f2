"""Forward + backward time and peak memory of every nonlocal block at the reference's insertion shapes.

    python tools/bench_blocks.py                      # CPU (2 threads) and, when present, CUDA
    python tools/bench_blocks.py --shapes cifar1 --blocks snl a2 --rounds 15

Shapes: PreResNet-20 stages 1/2/3 (C = 16/32/64 at 32x32/16x16/8x8, batch --batch, default 128) and ResNet-50
layer3 (C = 1024 at 14x14, batch --batch-imagenet, default 16: at 128 the dense affinities alone would take
several GiB on a CPU). C' = C / 2 as the models build them. SNL and A2 run both affinity paths.

Time: the median of --rounds runs after --warmup runs; the configurations are run alternately (A B C A B C ...)
so that a machine that other jobs slow down slows all of them alike, and a ratio between rows stays honest
(a fast configuration also gets an untimed run before each timed one, see alternate_timings).
Peak memory: the most memory allocated during one forward + backward, above what was held before it (the block's
weights and the input), as tools/_measure.py measures it.
"""
import argparse
import statistics

import torch

import tools  # noqa: F401  (python tools/x.py: puts the repository root on sys.path, tools/tools.py)
from lib import NONLOCAL_BLOCKS, build_nonlocal
from tools._measure import MIB, alternate_timings, peak_memory_bytes

SHAPES = {  # name: (C, H, W, which batch flag)
    "cifar1": (16, 32, 32, "batch"), "cifar2": (32, 16, 16, "batch"), "cifar3": (64, 8, 8, "batch"),
    "r50-layer3": (1024, 14, 14, "batch_imagenet"),
}
TWO_PATH_BLOCKS = ("snl", "a2")  # the blocks whose affinity has a factorized form

def block_configs(blocks, shapes):
    """(label, nl_type, affinity_path, shape name) for every block, shape and (SNL, A2) affinity path."""
    for shape in shapes:
        for kind in blocks:
            for path in (("factorized", "dense") if kind in TWO_PATH_BLOCKS else ("auto",)):
                label = kind if path == "auto" else f"{kind} ({path})"
                yield label, kind, path, shape


def make_step(kind, path, shape, batch, device):
    c, h, w, _ = SHAPES[shape]
    torch.manual_seed(0)
    block = build_nonlocal(kind, c, c // 2, affinity_path=path).to(device)
    x = torch.randn(batch, c, h, w, device=device, requires_grad=True)
    grad = torch.randn(batch, c, h, w, device=device)

    def step():
        block.zero_grad(set_to_none=True)
        x.grad = None
        block(x).backward(grad)
    return step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", nargs="+", default=list(NONLOCAL_BLOCKS), choices=list(NONLOCAL_BLOCKS))
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--batch", type=int, default=128, help="batch of the CIFAR shapes")
    parser.add_argument("--batch-imagenet", type=int, default=16, help="batch of the ResNet-50 layer3 shape")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when present")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True  # as the training runs without --deterministic (set_cudnn_mode)
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    for device in map(torch.device, devices):
        print(f"\n### {device.type}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
                                        else f" ({args.threads} threads)"))
        print("\n| shape | batch | block | fwd+bwd ms (median) | min ms | peak MiB |")
        print("|---|---|---|---:|---:|---:|")
        for shape in args.shapes:
            c, h, w, batch_flag = SHAPES[shape]
            batch = getattr(args, batch_flag)
            steps = {label: make_step(kind, path, shape, batch, device)
                     for label, kind, path, shape_ in block_configs(args.blocks, [shape])}
            times = alternate_timings(steps, args.rounds, args.warmup, device)
            for label, step in steps.items():
                peak = peak_memory_bytes(step, device) / MIB
                print(f"| C={c} {h}x{w} | {batch} | {label} | {statistics.median(times[label]) * 1e3:.1f} | "
                      f"{min(times[label]) * 1e3:.1f} | {peak:.1f} |", flush=True)


if __name__ == "__main__":
    main()
