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
weights and the input). CUDA: torch.cuda.max_memory_allocated. CPU: the allocator's running total recorded by
torch.profiler(profile_memory=True) (every tensor allocation and free, with the total after each), so neither
the interpreter nor other configurations count, unlike a process-wide maxrss.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib import NONLOCAL_BLOCKS, build_nonlocal  # noqa: E402

SHAPES = {  # name: (C, H, W, which batch flag)
    "cifar1": (16, 32, 32, "batch"), "cifar2": (32, 16, 16, "batch"), "cifar3": (64, 8, 8, "batch"),
    "r50-layer3": (1024, 14, 14, "batch_imagenet"),
}
TWO_PATH_BLOCKS = ("snl", "a2")  # the blocks whose affinity has a factorized form


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def alternate_timings(fns, rounds, warmup, device, settle_below=0.25):
    """{name: [seconds per run]}: each fn runs `warmup` times, then once per round, in turn.

    A run right after a memory-hungry one (a dense affinity frees GiBs) pays for fresh pages; fns faster than
    settle_below seconds therefore get one untimed run before each timed one, which is cheap for them.
    """
    settle = set()
    for name, fn in fns.items():
        for _ in range(warmup):
            if timed(fn, device) < settle_below:
                settle.add(name)
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            if name in settle:
                fn()
            times[name].append(timed(fn, device))
    return times


def peak_memory_bytes(fn, device):
    """Peak bytes allocated while fn runs, above the bytes allocated when it starts."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        held = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - held
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:  # the trace lists every allocation with the running total
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    memory = [e["args"] for e in events if e.get("name") == "[memory]" and e["args"].get("Device Type", 0) == 0]
    if not memory:
        return 0
    # The running total carries over from earlier profiled runs (memory they left allocated, e.g. gradients, is
    # still counted), so measure from the total before this run's first event.
    base = memory[0]["Total Allocated"] - memory[0]["Bytes"]
    return max(0, max(m["Total Allocated"] for m in memory) - base)


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
                peak = peak_memory_bytes(step, device) / 2 ** 20
                print(f"| C={c} {h}x{w} | {batch} | {label} | {statistics.median(times[label]) * 1e3:.1f} | "
                      f"{min(times[label]) * 1e3:.1f} | {peak:.1f} |", flush=True)


if __name__ == "__main__":
    main()
