"""Training-step cost of PreResNet-20 (CIFAR, batch 128, 32x32) plain and with each nonlocal block at stage 1.

    python tools/bench_train_step.py                  # all blocks, CPU with 2 threads
    python tools/bench_train_step.py --blocks snl --rounds 20
    python tools/bench_train_step.py --device cuda --amp bf16 --blocks snl nl

What a training loop pays per step. The models are built as a user builds them (`build_model("preresnet", "20",
nl_type=...)`: its default placement, one block at index 2 of stage 1; --stage 2 / 3 passes nl_layer) and one step
is the step of train_val.py (lib/engine/runtime.py): loss.item(), zero_grad(set_to_none=True), forward under
autocast with --amp, cross-entropy, backward, SGD step (momentum 0.9, weight decay 1e-4, lr 0.1: the CIFAR recipe;
a gradient scaler only with --amp fp16). In a training loop every step follows a step of the same model, so each
round runs, for every block in turn: the plain model once untimed and once timed, then the model with the block
once untimed and once timed (the earlier version gave only the plain model that untimed step, so the two sides
of a pair were not timed alike). Load from other jobs hits both sides of every pair alike; the ratio to the plain
backbone is the median over rounds of the ratio within the pair. On a shared CPU a few percent between runs is
noise: compare runs of the same command, and give the load average.
Peak memory: the most memory allocated during one step above what was held before it (weights, momentum
buffers, the batch), measured as in tools/bench_blocks.py; its ratio is to the plain backbone's.
"""
import argparse
import statistics

import torch
import torch.nn.functional as F

import tools  # noqa: F401  (python tools/x.py: puts the repository root on sys.path, tools/tools.py)
from lib import NONLOCAL_BLOCKS
from lib.engine.runtime import optimizer_step
from models import build_model
from tools._measure import peak_memory_bytes, timed


def make_train_step(nl_type, arch, batch, device, nl_layer, amp="off"):
    """One training step of PreResNet-`arch` with block nl_type (None: plain) as train_val.py runs it."""
    torch.manual_seed(0)
    placement = {} if nl_layer is None else dict(nl_layer=nl_layer)  # None: build_model's default, as a user gets
    model = build_model("preresnet", arch, num_classes=10, nl_type=nl_type, **placement).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    images = torch.randn(batch, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None

    def step():  # as lib.engine.epochs.train_one_epoch: forward, optimizer_step, one read of the loss
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(images), labels)
        optimizer_step(loss, optimizer, scaler)
        loss.item()
    return step


def loop_timed(step, device):
    """The time of one step taken as a training loop takes it: right after a step of the same model."""
    step()
    return timed(step, device)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", nargs="+", default=list(NONLOCAL_BLOCKS), choices=list(NONLOCAL_BLOCKS))
    parser.add_argument("--arch", type=int, default=20, choices=(20, 56, 110))
    parser.add_argument("--stage", default="1", choices=("1", "2", "3"), help="PreResNet stage of the block")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"), help="mixed-precision autocast")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True  # as the training runs without --deterministic (set_cudnn_mode)
    device = torch.device(args.device)
    names = ["plain"] + args.blocks
    nl_layer = None if args.stage == "1" else (args.stage,)  # stage 1 is build_model's default placement
    steps = {name: make_train_step(None if name == "plain" else name, args.arch, args.batch, device, nl_layer,
                                   args.amp)
             for name in names}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times = {name: [] for name in names}
    ratios = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in args.blocks:
            plain = loop_timed(steps["plain"], device)
            block = loop_timed(steps[name], device)
            times["plain"].append(plain)
            times[name].append(block)
            ratios[name].append(block / plain)
    peaks = {name: peak_memory_bytes(step, device) / 2 ** 20 for name, step in steps.items()}
    where = f"{torch.cuda.get_device_name(device)}" if device.type == "cuda" else f"CPU, {args.threads} threads"
    amp = "" if args.amp == "off" else f", autocast {args.amp}"
    print(f"PreResNet-{args.arch}, batch {args.batch}, block at stage {args.stage}; {where}{amp}; "
          f"{args.rounds} rounds of (plain, block) pairs, each timed step right after an untimed one of the "
          f"same model, after {args.warmup} warm-up steps\n")
    print("| model | ms / step (median) | images / s | time vs plain (quartiles) | peak MiB | memory vs plain |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in names:
        median = statistics.median(times[name])
        ratio = "1.000x"
        if name != "plain":
            low, _, high = statistics.quantiles(ratios[name], n=4) if args.rounds > 1 else [ratios[name][0]] * 3
            ratio = f"{statistics.median(ratios[name]):.3f}x ({low:.2f}-{high:.2f})"
        print(f"| {name} | {median * 1e3:.0f} | {args.batch / median:.0f} | {ratio} | {peaks[name]:.1f} | "
              f"{peaks[name] / peaks['plain']:.3f}x |", flush=True)


if __name__ == "__main__":
    main()
