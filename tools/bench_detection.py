"""Detection cost: a Mask R-CNN (or Faster R-CNN) ResNet-FPN training step plain vs with a nonlocal block.

    python tools/bench_detection.py                          # Mask R-CNN R-50-FPN, 512 x 512, batch 1, CPU, 3 rounds
    python tools/bench_detection.py --blocks snl --rounds 5 --nl-nums 5
    python tools/bench_detection.py --arch 18 --size 128 --rounds 1      # a quick look

Issue 23's target: SNL <= 1.10x the plain step's time and memory, and no N x N tensor for SNL. One step = the
detector in training mode on --batch images of --size x --size (the transform's min_size = max_size = size, so
they are not resized) with --objects random boxes and box masks each, the sum of its losses, backward, an SGD step
(lr 0.02, momentum 0.9, weight decay 1e-4: the recipe). The backbone is as trained from ImageNet weights (frozen
BatchNorm, layers 2-4 trainable: torchvision's defaults) but randomly initialized: no download. The RPN / RoI
samplers draw at random, so every step reseeds the generator: every model sees the same draws.
Models run in an order that rotates every round and "vs plain" is the median of the per-round ratios
(tools/_measure.py measure_steps); peak memory is the most allocated during one step above what was held before.
"N x N formed": whether a tensor created inside a block's forward had two dimensions of its N = H W.
"""
import argparse
import os
import statistics
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

import tools  # noqa: F401  (python tools/x.py: puts the repository root on sys.path, tools/tools.py)
from lib import NONLOCAL_BLOCKS
from models import build_model
from tools._measure import block_affinity_check, measure_steps


def random_targets(batch, size, objects, device, num_classes, seed=0):
    """Boxes of at least a tenth of the image, labels and filled box masks, the same for every model."""
    g = torch.Generator().manual_seed(seed)
    targets = []
    for _ in range(batch):
        corner = torch.rand(objects, 2, generator=g) * size * 0.6
        extent = (0.1 + torch.rand(objects, 2, generator=g) * 0.3) * size
        boxes = torch.cat([corner, (corner + extent).clamp(max=size - 1)], dim=1)
        masks = torch.zeros(objects, size, size, dtype=torch.uint8)
        for k, (x0, y0, x1, y1) in enumerate(boxes.round().int().tolist()):
            masks[k, y0:y1, x0:x1] = 1
        labels = torch.randint(1, num_classes, (objects,), generator=g)
        targets.append({key: value.to(device) for key, value in
                        dict(boxes=boxes, labels=labels, masks=masks).items()})
    return targets


def make_step(args, nl_type, device, num_classes=91):
    """(step(), model): one training step of the detector on a fixed batch."""
    torch.manual_seed(0)
    model = build_model(args.model, args.arch, num_classes, nl_type=nl_type, nl_nums=args.nl_nums if nl_type else 0,
                        min_size=args.size, max_size=args.size, frozen_bn=True, trainable_backbone_layers=3)
    model = model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=1e-4)
    images = list(torch.rand(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
                  .to(device))
    targets = random_targets(args.batch, args.size, args.objects, device, num_classes)
    if args.model == "fasterrcnn":
        targets = [{k: v for k, v in t.items() if k != "masks"} for t in targets]

    def step():
        torch.manual_seed(0)  # the samplers' draws
        optimizer.zero_grad(set_to_none=True)
        loss = sum(model(images, targets).values())
        loss.backward()
        optimizer.step()
    return step, model


def step_flops(step):
    """FLOPs of one real step (forward + backward; torch.utils.flop_counter): exact, and free of machine load. The
    detector's data-dependent ops (proposals, sampling) do not run on the meta device, so this costs one step."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="maskrcnn", choices=("maskrcnn", "fasterrcnn"))
    parser.add_argument("--arch", type=int, default=50, choices=(18, 34, 50, 101))
    parser.add_argument("--blocks", nargs="+", default=["snl", "nl"], choices=list(NONLOCAL_BLOCKS))
    parser.add_argument("--nl-nums", type=int, default=1, choices=(1, 5), help="1: one block in layer3")
    parser.add_argument("--size", type=int, default=512, help="image side (a multiple of 32)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--objects", type=int, default=4, help="ground-truth objects per image")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory runs")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{args.threads} threads"
    print(f"### {args.model} R-{args.arch}-FPN training step, {args.size}x{args.size}, batch {args.batch}, "
          f"nl_nums {args.nl_nums}; {device.type} ({where}), torch {torch.__version__}, "
          f"load average before {os.getloadavg()[0]:.2f}", flush=True)
    keys = [None] + args.blocks
    made = {key: make_step(args, key, device) for key in keys}
    steps = {key: step for key, (step, _) in made.items()}
    times, measured = measure_steps(steps, device, args.rounds, 0, args.memory)
    flops = {key: step_flops(step) for key, step in steps.items()}
    print("\n| model | s / step (median) | min s | vs plain (median ratio) | GFLOPs / step | vs plain | peak MiB | "
          "vs plain | largest block tensor | N x N formed |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    details = []
    for key in keys:
        median, low, peak, _, _ = measured[key]
        ratio = statistics.median(t / p for t, p in zip(times[key], times[None]))
        body = made[key][1].backbone.body
        blocks = [(path, body.get_submodule(path)) for path in body.nonlocal_paths]
        check = block_affinity_check(body, blocks, steps[key]) if blocks else {}
        largest = max((shape for _, shape, _, _ in check.values()), key=lambda s: torch.Size(s).numel(),
                      default=None)
        dense = "-" if not check else ("yes" if any(d for _, _, d, _ in check.values()) else "no")
        print(f"| {key or 'plain'}{f' x {len(blocks)}' if blocks else ''} | {median:.2f} | {low:.2f} | "
              f"{ratio:.3f}x | {flops[key] / 1e9:.0f} | {flops[key] / flops[None]:.3f}x | {peak:.0f} | "
              f"{peak / measured[None][2]:.3f}x | "
              f"{'x'.join(map(str, largest)) if largest else '-'} | {dense} |", flush=True)
        details += [f"  {key} {path}: N = {n}, largest tensor {'x'.join(map(str, shape))}, "
                    f"N x N {'formed' if formed else 'not formed'}"
                    f"{f' (N = a channel count: probed alone at N = {probed})' if probed != n else ''}"
                    for path, (n, shape, formed, probed) in check.items()]
    print("\n".join(details))
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
