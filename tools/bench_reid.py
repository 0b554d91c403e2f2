"""Re-ID cost: the training step of the re-ID ResNet plain vs with nonlocal blocks, and the evaluation protocol
(and k-reciprocal re-ranking) at Market-1501 scale.

    python tools/bench_reid.py                                  # both parts: CPU, 2 threads, 3 rounds
    python tools/bench_reid.py --skip-eval --blocks snl --rounds 5
    python tools/bench_reid.py --skip-train --rerank-scale 1     # re-ranking at full Market-1501 scale (~2 min)

Training step (issue 22's target: SNL <= 1.10x the plain step's time and memory): ResNet-`--arch` re-ID model at
--size (default 256 x 128), batch --batch as P x K = batch/4 identities x 4 images, `--nl-nums` blocks (5 = AGW's
places), forward, ReidCriterion (label-smoothed CE + batch-hard triplet on the pre-BN feature), backward, Adam step
(lr 3.5e-4, weight decay 5e-4: the recipe). The models run in an order that rotates every round
(tools/_measure.py measure_steps) and "vs plain" is the median of the per-round ratios, so load from other jobs
hits every model alike. Peak memory: the most memory allocated during one step above what was held before it
(weights, Adam moments, the batch). "N x N formed": whether any tensor created inside a block's forward had two
dimensions of that block's N (its H W), i.e. whether a dense affinity was formed (_measure.block_affinity_check).

Evaluation: random L2-normalized features (3,368 queries x 15,913 gallery x 2048 by default, Market-1501's test
split) with Market-like pids (750 identities, 2,793 distractors of pid 0 in the gallery) and 6 cameras, through
lib.engine.reid.evaluation.evaluate (blockwise distances, ranking, CMC / mAP / mINP). Random features make the
metrics meaningless but not the cost: every query still sorts the whole gallery. Memory: the tracemalloc peak
(numpy and Python allocations) and the process's peak resident memory above its level before the call (Linux
VmHWM, reset through /proc/self/clear_refs; torch's allocations included).
"""
import argparse
import os
import statistics
import sys
import time
import tracemalloc

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

import tools  # noqa: F401  (python tools/x.py: puts the repository root on sys.path, tools/tools.py)
from lib import NONLOCAL_BLOCKS
from lib.engine.reid.evaluation import evaluate
from lib.engine.reid.losses import ReidCriterion
from models import build_model
from tools._measure import MIB, block_affinity_check, measure_steps

MARKET = dict(queries=3368, gallery=15913, ids=750, distractors=2793, cameras=6)


def make_step(nl_type, nl_nums, arch, batch, size, device, num_classes=751):
    """(step(), model): one training step of the re-ID model (a fixed P x K batch, 4 images per identity)."""
    torch.manual_seed(0)
    model = build_model("reid", arch, num_classes, nl_type=nl_type, nl_nums=nl_nums if nl_type else 0)
    model = model.to(device).train()
    criterion = ReidCriterion(num_classes, model.feature_dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=3.5e-4, weight_decay=5e-4)
    images = torch.randn(batch, 3, *size, device=device)
    pids = torch.arange(batch, device=device) // 4  # P x K: the batch-hard triplet needs positives and negatives

    def step():
        optimizer.zero_grad(set_to_none=True)
        logits, features = model(images)
        loss, _ = criterion(logits, features, pids)
        loss.backward()
        optimizer.step()
    return step, model


def step_flops(nl_type, nl_nums, arch, batch, size, num_classes=751):
    """FLOPs of one forward + backward of the model, counted on the meta device: exact, and free of machine
    load (the loss's few FLOPs left out: its hard-triplet check needs data)."""
    with torch.device("meta"):
        model = build_model("reid", arch, num_classes, nl_type=nl_type, nl_nums=nl_nums if nl_type else 0).train()
        images = torch.randn(batch, 3, *size)
    with FlopCounterMode(display=False) as counter:
        logits, features = model(images)
        (logits.sum() + features.sum()).backward()
    return counter.get_total_flops()


def bench_training(args, device):
    keys = [None] + args.blocks
    made = {key: make_step(key, args.nl_nums, args.arch, args.batch, args.size, device) for key in keys}
    steps = {key: step for key, (step, _) in made.items()}
    times, measured = measure_steps(steps, device, args.rounds, 0, args.memory)
    flops = {key: step_flops(key, args.nl_nums, args.arch, args.batch, args.size) for key in keys}
    print("\n| model | s / step (median) | min s | vs plain (median ratio) | GFLOPs / step | vs plain | peak MiB | "
          "vs plain | largest block tensor | N x N formed |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    checks = {}
    for key in keys:
        median, low, peak, _, _ = measured[key]
        ratio = statistics.median(t / p for t, p in zip(times[key], times[None]))
        model = made[key][1]
        blocks = [(path, model.get_submodule(path)) for path in model.nonlocal_paths]
        checks[key] = block_affinity_check(model, blocks, steps[key]) if blocks else {}
        found = checks[key].values()
        largest = max((shape for _, shape, _, _ in found), key=lambda s: torch.Size(s).numel(), default=None)
        dense = "-" if not found else ("yes" if any(d for _, _, d, _ in found) else "no")
        print(f"| {key or 'plain'}{f' x {len(blocks)}' if blocks else ''} | {median:.2f} | {low:.2f} | "
              f"{ratio:.3f}x | {flops[key] / 1e9:.0f} | {flops[key] / flops[None]:.3f}x | {peak:.0f} | "
              f"{peak / measured[None][2]:.3f}x | "
              f"{'x'.join(map(str, largest)) if largest else '-'} | {dense} |", flush=True)
    for key, check in checks.items():
        for path, (n, shape, dense, probed) in check.items():
            print(f"  {key} {path}: N = {n}, largest tensor {'x'.join(map(str, shape))}, "
                  f"N x N {'formed' if dense else 'not formed'}"
                  f"{f' (N = a channel count: probed alone at N = {probed})' if probed != n else ''}")
    return checks


def market_like(scale, dim, seed=0):
    """(qf, gf, q_pids, g_pids, q_camids, g_camids) of Market-1501's test-split sizes times scale: every
    identity's images spread over the cameras, distractors (pid 0) in the gallery, random unit features."""
    rng = np.random.default_rng(seed)
    nq, ng = round(MARKET["queries"] * scale), round(MARKET["gallery"] * scale)
    ids = max(2, round(MARKET["ids"] * scale))
    distractors = round(MARKET["distractors"] * scale)
    q_pids = 1 + np.arange(nq) % ids
    g_pids = np.concatenate([1 + np.arange(ng - distractors) % ids, np.zeros(distractors, dtype=np.int64)])
    q_camids = rng.integers(1, MARKET["cameras"] + 1, nq)
    g_camids = rng.integers(1, MARKET["cameras"] + 1, ng)
    features = torch.nn.functional.normalize(torch.randn(nq + ng, dim, generator=torch.Generator().manual_seed(seed)),
                                             dim=1)
    return features[:nq], features[nq:], q_pids, g_pids, q_camids, g_camids


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def measured_call(fn):
    """(result, seconds, tracemalloc peak MiB, peak RSS above the start in MiB or None where not measurable)."""
    rss_peak = None
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (the peak resident size) to the current size
        start_rss = _status_kib("VmRSS")
    except OSError:
        start_rss = None
    tracemalloc.start()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    traced = tracemalloc.get_traced_memory()[1] / MIB
    tracemalloc.stop()
    if start_rss is not None:
        rss_peak = (_status_kib("VmHWM") - start_rss) / 1024
    return result, seconds, traced, rss_peak


def bench_evaluation(args):
    print(f"\n### evaluation, {args.threads} threads, load average before {os.getloadavg()[0]:.2f}")
    print("\n| what | queries x gallery | seconds | tracemalloc peak MiB | peak RSS above start MiB | mAP |")
    print("|---|---|---:|---:|---:|---:|")
    runs = [("distance + ranking + mAP (blockwise)", args.eval_scale, None)]
    if args.rerank_scale > 0:
        runs.append((f"k-reciprocal re-ranking {tuple(args.rerank)} + ranking + mAP", args.rerank_scale,
                     tuple(args.rerank)))
    rows = []
    for what, scale, rerank in runs:
        qf, gf, q_pids, g_pids, q_camids, g_camids = market_like(scale, args.dim)
        metrics, seconds, traced, rss = measured_call(lambda: evaluate(
            qf, gf, q_pids, g_pids, q_camids, g_camids, rerank=rerank, block_size=args.block_size))
        rows.append((what, len(qf), len(gf), seconds, traced, rss))
        print(f"| {what} | {len(qf):,} x {len(gf):,} | {seconds:.1f} | {traced:.0f} | "
              f"{'-' if rss is None else f'{rss:.0f}'} | {metrics['mAP']:.4f} |", flush=True)
    if args.rerank_scale not in (0, 1) and len(rows) == 2:
        # Explicitly an extrapolation: the reranker's work grows with N (neighbour search: N^2 D, the Jaccard rows:
        # about N x (neighbours)), so time is scaled by the square of the size ratio (an upper estimate for the
        # sparse part) and memory, dominated by the N x D features and per-row structures, linearly.
        factor = 1 / args.rerank_scale
        _, nq, ng, seconds, traced, rss = rows[1]
        print(f"\nextrapolated (not measured) to the full {MARKET['queries']:,} x {MARKET['gallery']:,}: "
              f"about {seconds * factor ** 2:.0f} s (x{factor ** 2:.0f}: quadratic), tracemalloc peak about "
              f"{traced * factor:.0f} MiB (x{factor:.0f}: linear)")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", nargs="+", default=["snl", "nl"], choices=list(NONLOCAL_BLOCKS))
    parser.add_argument("--arch", type=int, default=50, choices=(18, 34, 50, 101))
    parser.add_argument("--nl-nums", type=int, default=5, choices=(1, 5))
    parser.add_argument("--batch", type=int, default=16, help="a multiple of 4 (4 images per identity)")
    parser.add_argument("--size", type=int, nargs=2, default=[256, 128], metavar=("H", "W"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory runs")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-eval", action="store_true")
    parser.add_argument("--eval-scale", type=float, default=1.0, help="fraction of Market-1501's test split sizes")
    parser.add_argument("--rerank-scale", type=float, default=0.25, help="the same for re-ranking (default 0.25, "
                        "a quick run: the full-scale figures are then extrapolated and labelled so; the full scale "
                        "takes about 1.5 min on a loaded 2-core CPU); 1 = full, 0 skips it")
    parser.add_argument("--rerank", type=float, nargs=3, default=[20, 6, 0.3], metavar=("K1", "K2", "LAMBDA"))
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--block-size", type=int, default=128)
    args = parser.parse_args(argv)
    if args.batch % 4 or args.batch < 8:
        parser.error("--batch must be a multiple of 4, at least 8 (two identities for the triplet loss)")
    args.rerank = [int(args.rerank[0]), int(args.rerank[1]), args.rerank[2]]
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if not args.skip_train:
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{args.threads} threads"
        print(f"### training step: ResNet-{args.arch} re-ID, {args.size[0]}x{args.size[1]}, batch {args.batch}, "
              f"nl_nums {args.nl_nums}; {device.type} ({where}), torch {torch.__version__}, "
              f"load average before {os.getloadavg()[0]:.2f}", flush=True)
        bench_training(args, device)
        print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    if not args.skip_eval:
        bench_evaluation(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
