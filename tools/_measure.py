"""What the benchmarks share: timing with device synchronization, peak memory of one run, the tensor shapes a
step creates, the rotating measuring loop of the model benchmarks and its flags, and parameter / FLOP counts.

Peak memory: the most memory allocated during one run, above what was held before it. CUDA:
torch.cuda.max_memory_allocated. CPU: the allocator's running total recorded by torch.profiler(profile_memory=True)
(every tensor allocation and free, with the total after each), so neither the interpreter nor other
configurations count, unlike a process-wide maxrss.
"""
import json
import os
import statistics
import tempfile
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

MIB = 2 ** 20


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


class TensorShapes(TorchDispatchMode):
    """Records the shape of every tensor an op creates (to look for an N x N affinity)."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(item, torch.Tensor):
                self.shapes.append(tuple(item.shape))
        return out


def add_measure_flags(parser):
    """The flags of measure_steps' callers: --rounds, --threads, --devices, --no-memory."""
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--devices", nargs="+", default=["cpu"], help="cpu and / or cuda")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory runs")


def measure_steps(steps, device, rounds, n, memory=True):
    """Time and inspect training steps {key: step()}: one warm-up each, then `rounds` rounds in an order that rotates
    every round, so that no step always runs right after the one that frees the most memory and load from other jobs
    hits all alike. Returns ({key: [seconds per round]}, {key: (median s, min s, peak MiB, largest tensor shape,
    whether a tensor with two dimensions of size n was formed)}); peak memory (NaN without `memory`) and the shapes
    come from one more step under the profiler and TensorShapes (which adds no allocations of its own)."""
    keys = list(steps)
    for step in steps.values():
        step()  # warm-up: first-touch allocations, oneDNN primitive caches
    times = {key: [] for key in keys}
    for k in range(rounds):
        for key in keys[k % len(keys):] + keys[:k % len(keys)]:
            times[key].append(timed(steps[key], device))
        print(f"  round {k + 1}: " + ", ".join(f"{key or 'plain'} {times[key][-1]:.2f} s" for key in keys), flush=True)
    measured = {}
    for key, step in steps.items():
        recorder = TensorShapes()

        def recorded_step():
            with recorder:
                step()
        peak = peak_memory_bytes(recorded_step, device) / MIB if memory else float("nan")
        if not memory:
            recorded_step()
        largest = max(recorder.shapes, key=lambda shape: torch.Size(shape).numel())
        dense = any(shape.count(n) >= 2 for shape in recorder.shapes)
        measured[key] = (statistics.median(times[key]), min(times[key]), peak, largest, dense)
    return times, measured


def count(module, input_shape):
    """(parameters, forward FLOPs) of module for one input of input_shape, on the meta device."""
    params = sum(p.numel() for p in module.parameters())
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module.eval()(torch.empty(1, *input_shape, device="meta"))
    return params, counter.get_total_flops()


def block_affinity_check(model, blocks, run):
    """{block name: (N, largest tensor shape, whether a tensor with two dimensions of size N was formed, N probed)}
    for the nonlocal blocks [(name, module)] of model during run(). Each block's tensors are recorded only while its
    own forward runs, with N = the product of its input's positions (H W, or T H W): a whole-step record would
    mistake a backbone weight such as ResNet-50's 512 x 512 x 3 x 3 for the 512 x 512 affinity of a 32 x 16 grid.
    Where N equals a channel count of the block (ResNet-50's layer2 at 256 x 128: C = 512 = 32 x 16), a
    (B, C, N) view has two dimensions of size N too; such a block is probed once more alone, on a random input
    with one more row of positions (N' = (H + 1) W, on the same side of C' so the same path is taken), and its
    answer is the probe's (N probed = N'). The backward pass is not recorded: autograd keeps or recomputes what
    the forward made, so an N x N tensor in backward means one in forward (the dense paths save theirs)."""
    recorders, inputs_seen, handles = {}, {}, []

    def enter(module, inputs, name):
        inputs_seen[name] = inputs[0].detach()
        recorders[name] = TensorShapes()
        recorders[name].__enter__()

    def leave(module, inputs, output, name):
        recorders[name].__exit__(None, None, None)

    for name, module in blocks:
        handles.append(module.register_forward_pre_hook(lambda m, i, name=name: enter(m, i, name)))
        handles.append(module.register_forward_hook(lambda m, i, o, name=name: leave(m, i, o, name)))
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    modules = dict(blocks)
    result = {}
    for name, x in inputs_seen.items():
        n = int(torch.Size(x.shape[2:]).numel())
        shapes = recorders[name].shapes or [()]
        largest = max(shapes, key=lambda shape: torch.Size(shape).numel())
        probed, formed = n, any(shape.count(n) >= 2 for shape in shapes)
        if n in _channel_counts(modules[name], x):
            probed, formed = _probe(modules[name], x)
        result[name] = (n, largest, formed, probed)
    return result


def _channel_counts(module, x):
    return {x.shape[1]} | {size for p in module.parameters() for size in p.shape}


def _probe(module, x):
    """(N', whether the block alone forms an N' x N' tensor) on a random input with more rows than x."""
    shape = list(x.shape)
    channels = _channel_counts(module, x)
    while True:  # one more row at a time until N' is no channel count
        shape[-2] += 1
        n = int(torch.Size(shape[2:]).numel())
        if n not in channels:
            break
    probe = torch.randn([1] + shape[1:], dtype=x.dtype, device=x.device, requires_grad=True)
    recorder = TensorShapes()
    with recorder:
        module(probe)
    return n, any(shape.count(n) >= 2 for shape in recorder.shapes)
