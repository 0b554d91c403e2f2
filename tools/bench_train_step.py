"""Training-step cost of PreResNet-20 (CIFAR, batch 128, 32x32) plain and with each nonlocal block at stage 1.

    python tools/bench_train_step.py                  # all blocks, CPU with 2 threads
    python tools/bench_train_step.py --blocks snl --rounds 20
    python tools/bench_train_step.py --device cuda --amp bf16 --blocks snl nl

One step = forward, cross-entropy loss, backward, SGD step (momentum 0.9, weight decay 1e-4, lr 0.1: the CIFAR
recipe), under autocast with --amp (fp16 with a gradient scaler, as train_val.py --amp fp16). Each round steps,
for every block in turn: the plain model once untimed (after a memory-hungry model the first step pays for fresh
pages), the plain model timed, the model with the block timed. So load from other jobs hits both sides of every
pair alike; the ratio to the plain backbone is the median over rounds of the ratio within the pair.
Peak memory: the most memory allocated during one step above what was held before it (weights, momentum
buffers, the batch), measured as in tools/bench_blocks.py; its ratio is to the plain backbone's.
"""
import argparse
import statistics

import torch
import torch.nn.functional as F

import tools  # noqa: F401  (python tools/x.py: puts the repository root on sys.path, tools/tools.py)
from lib import NONLOCAL_BLOCKS
from models import build_model
from tools._measure import peak_memory_bytes, timed


def make_train_step(nl_type, arch, batch, device, nl_layer, amp="off"):
    torch.manual_seed(0)
    model = build_model("preresnet", arch, num_classes=10, nl_type=nl_type, nl_layer=nl_layer).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    images = torch.randn(batch, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(images), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return step


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
    steps = {name: make_train_step(None if name == "plain" else name, args.arch, args.batch, device, (args.stage,),
                                   args.amp)
             for name in names}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times = {name: [] for name in names}
    ratios = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in args.blocks:
            steps["plain"]()
            plain, block = timed(steps["plain"], device), timed(steps[name], device)
            times["plain"].append(plain)
            times[name].append(block)
            ratios[name].append(block / plain)
    peaks = {name: peak_memory_bytes(step, device) / 2 ** 20 for name, step in steps.items()}
    where = f"{torch.cuda.get_device_name(device)}" if device.type == "cuda" else f"CPU, {args.threads} threads"
    amp = "" if args.amp == "off" else f", autocast {args.amp}"
    print(f"PreResNet-{args.arch}, batch {args.batch}, block at stage {args.stage}; {where}{amp}; "
          f"{args.rounds} rounds of (plain, block) pairs after {args.warmup} warm-up steps\n")
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
