"""Parameters and FLOPs of every nonlocal block at the reference's insertion shapes, and of every model.

    python tools/complexity.py                              # print the markdown tables
    python tools/complexity.py --write tests/complexity.json  # re-pin the numbers tests/test_complexity.py checks

FLOPs are forward FLOPs per image, counted by torch.utils.flop_counter.FlopCounterMode: 2 per multiply-add of
every matrix product and convolution (mm, bmm, baddbmm, conv ...), including the batched products inside the
affinity that a per-layer counter misses; element-wise work (softmax, BN, ReLU) is not counted. Everything runs
on the meta device (shapes only, no memory, no time). SNL and A2 are counted on both affinity paths; models and
the pinned numbers use the default ('auto') path. The models run at 32x32 (CIFAR) or 224x224 (ImageNet); the video
models on one clip of 16 x 112 x 112 (GFLOPs per clip), with one block in layer3 (l3) or after layer2's first
residual block (l2), as models.build_model places them.
Every registered block is counted (cheb and arma at their default order 2, cheb also at orders 1 and 3).
Re-ID models (models/reid.py: last stride 1, BNNeck, 751 classes as Market-1501; the eval forward, which ends at
the BNNeck feature) at 256x128; detectors (models/detection.py) at 800x1333: only the ResNet-FPN backbone is
counted, on the 800x1344 batch GeneralizedRCNNTransform feeds it (1333 padded to a multiple of 32), because the
heads' work depends on the proposals NMS keeps, which the meta device cannot compute; their parameters are the
whole detector's (heads included, 91 COCO classes). Mask R-CNN and Faster R-CNN share that backbone.
"""
import argparse
import json

import torch

import tools  # noqa: F401  (python tools/x.py: puts the repository root on sys.path, tools/tools.py)
from lib import NONLOCAL_BLOCKS, build_nonlocal
from models import build_model
from tools._measure import count

BLOCK_SHAPES = {"cifar1": (16, 32, 32), "cifar2": (32, 16, 16), "cifar3": (64, 8, 8), "r50-layer3": (1024, 14, 14)}
TWO_PATH_BLOCKS = ("snl", "a2")
EXTRA_ORDERS = {"cheb": (1, 3)}  # besides the default order 2; cheb order 1 costs what SNL does
MODELS = ([("preresnet", arch, nl_type, 1 if nl_type else 0) for arch in (20, 56, 110)
           for nl_type in (None,) + tuple(NONLOCAL_BLOCKS)]
          + [("resnet", 50, None, 0), ("resnet", 50, "snl", 1), ("resnet", 50, "snl", 5)])
VIDEO_CLIP = (3, 16, 112, 112)
# (backbone, arch, nl_type, nl_nums, nl_layer): every video backbone plain, with SNL in layer3 and after layer2.
VIDEO_MODELS = ([(backbone, arch, nl_type, 1 if nl_type else 0, layer)
                 for backbone, arch in (("resnet3d", 18), ("resnet3d", 34), ("resnet3d", 50), ("resnet3d", 101),
                                        ("r3d", 18), ("mc3", 18), ("r2plus1d", 18))
                 for nl_type, layer in ((None, 1), ("snl", 1), ("snl", 2))]
                + [("resnet3d", 50, "snl", 5, 1)])
REID_INPUT, REID_CLASSES = (3, 256, 128), 751
# (backbone, arch, nl_type, nl_nums): plain, SNL and NL at AGW's five places (models.reid.reid_positions).
REID_MODELS = [("reid", 50, None, 0), ("reid", 50, "snl", 5), ("reid", 50, "nl", 5)]
DETECTION_INPUT = (3, 800, 1344)
# Plain, one block in layer3 (CGNL's place) and the ImageNet placement of five.
DETECTION_MODELS = [("maskrcnn", 50, None, 0), ("maskrcnn", 50, "snl", 1), ("maskrcnn", 50, "nl", 1),
                    ("maskrcnn", 50, "snl", 5)]


def block_name(kind, shape, path, order=None):
    label = kind if order is None else f"{kind}{order}"
    return f"{label}-{shape}" + ("" if path == "auto" else f"-{path}")


def block_variants():
    """(kind, order) of every block counted: order None = the block's default."""
    return [(kind, None) for kind in NONLOCAL_BLOCKS] + [(kind, order) for kind, orders in EXTRA_ORDERS.items()
                                                           for order in orders]


def model_name(backbone, arch, nl_type, nl_nums, nl_layer=None):
    """nl_layer: video models only (l2 = after layer2's first residual block, l3 = the nl_nums positions)."""
    layer = "" if nl_layer is None or not nl_type else f"-l{3 if nl_layer == 1 else nl_layer}"
    return f"{backbone}{arch}-" + (f"{nl_type}-n{nl_nums}{layer}" if nl_type else "plain")


def block_complexity(paths=("auto", "dense", "factorized"), shapes=tuple(BLOCK_SHAPES)):
    """{name: (params, FLOPs)} of every block at every shape; SNL and A2 on every path in `paths`."""
    out = {}
    for shape in shapes:
        c, h, w = BLOCK_SHAPES[shape]
        for kind, order in block_variants():
            for path in (paths if kind in TWO_PATH_BLOCKS else ("auto",)):
                with torch.device("meta"):
                    block = build_nonlocal(kind, c, c // 2, affinity_path=path, order=order)
                out[block_name(kind, shape, path, order)] = count(block, (c, h, w))
    return out


def model_complexity():
    """{name: (params, FLOPs)} of every model in MODELS, on the default ('auto') affinity path."""
    out = {}
    for backbone, arch, nl_type, nl_nums in MODELS:
        with torch.device("meta"):
            model = build_model(backbone, arch, num_classes=10 if backbone == "preresnet" else 1000,
                                nl_type=nl_type, nl_nums=nl_nums)
        size = 32 if backbone == "preresnet" else 224
        out[model_name(backbone, arch, nl_type, nl_nums)] = count(model, (3, size, size))
    for backbone, arch, nl_type, nl_nums, layer in VIDEO_MODELS:
        with torch.device("meta"):
            model = build_model(backbone, arch, num_classes=400, nl_type=nl_type, nl_nums=nl_nums, nl_layer=layer)
        out[model_name(backbone, arch, nl_type, nl_nums, layer)] = count(model, VIDEO_CLIP)
    for backbone, arch, nl_type, nl_nums in REID_MODELS:
        with torch.device("meta"):
            model = build_model(backbone, arch, num_classes=REID_CLASSES, nl_type=nl_type, nl_nums=nl_nums)
        out[model_name(backbone, arch, nl_type, nl_nums)] = count(model, REID_INPUT)
    for backbone, arch, nl_type, nl_nums in DETECTION_MODELS:
        with torch.device("meta"):
            model = build_model(backbone, arch, num_classes=91, nl_type=nl_type, nl_nums=nl_nums)
        # The backbone returns the FPN levels (a dict): count() only needs the forward to run.
        params = sum(p.numel() for p in model.parameters())
        out[model_name(backbone, arch, nl_type, nl_nums)] = (params, count(model.backbone, DETECTION_INPUT)[1])
    return out


def pinned_numbers():
    """What tests/complexity.json pins: every block on the auto path, and every model."""
    return {"blocks": block_complexity(paths=("auto",)), "models": model_complexity()}



def _model_table(models, title, unit, digits, rows):
    """One markdown table: rows of (label, model name, its plain model's name), parameters and GFLOPs of each, and
    what it adds to the plain model."""
    print(f"\n| {title} | params (M) | +params vs plain | {unit} | +GFLOPs vs plain |\n|---|---:|---:|---:|---:|")
    for label, name, base in rows:
        (params, flops), (base_params, base_flops) = models[name], models[base]
        print(f"| {label} | {params / 1e6:.3f} | {params - base_params:+,} | {flops / 1e9:.{digits}f} | "
              f"{(flops - base_flops) / 1e9:+.{digits}f} |")

def print_tables():
    blocks = block_complexity()
    print("| block | shape (C, H x W) | params | MFLOPs / image |\n|---|---|---:|---:|")
    for shape, (c, h, w) in BLOCK_SHAPES.items():
        for kind, order in block_variants():
            for path in (("auto", "factorized", "dense") if kind in TWO_PATH_BLOCKS else ("auto",)):
                params, flops = blocks[block_name(kind, shape, path, order)]
                label = (kind if order is None else f"{kind} order {order}") + ("" if path == "auto" else f" ({path})")
                print(f"| {label} | {c}, {h}x{w} | {params:,} | {flops / 1e6:.2f} |")
    models = model_complexity()

    def plain(backbone, arch):
        return model_name(backbone, arch, None, 0)
    _model_table(models, "model", "GFLOPs / image", 4,
                 [(f"{b}-{a}" + (f" + {n} {t}" if t else " (plain)"), model_name(b, a, t, n), plain(b, a))
                  for b, a, t, n in MODELS])
    video_rows = []
    for backbone, arch, nl_type, nl_nums, layer in VIDEO_MODELS:
        where = "after layer2.0" if layer == 2 else ("in layer3 / layer4" if nl_nums == 5 else "in layer3")
        label = f"{backbone}-{arch}" + (f" + {nl_nums} {nl_type} {where}" if nl_type else " (plain)")
        video_rows.append((label, model_name(backbone, arch, nl_type, nl_nums, layer), plain(backbone, arch)))
    _model_table(models, "video model (400 classes, clip 16x112x112)", "GFLOPs / clip", 2, video_rows)
    task_rows = [("re-ID model (751 classes, 256x128, eval feature)", "GFLOPs / image", REID_MODELS,
                  {5: " at AGW's places (layer2 x 2, layer3 x 3)"}),
                 ("detector (91 classes; GFLOPs: ResNet-FPN backbone only, 800x1333 padded to 800x1344)",
                  "backbone GFLOPs / image", DETECTION_MODELS, {1: " in layer3", 5: " in layer3 / layer4"})]
    for title, unit, rows, places in task_rows:
        _model_table(models, title, unit, 2,
                     [(f"{b}-{a}" + (f" + {n} {t}{places[n]}" if t else " (plain)"), model_name(b, a, t, n),
                       plain(b, a)) for b, a, t, n in rows])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", metavar="JSON", help="write the pinned numbers to this file instead")
    args = parser.parse_args(argv)
    if args.write:
        numbers = pinned_numbers()
        lines = [f'  "{name}": {json.dumps(list(value))}' for table in ("blocks", "models")
                 for name, value in sorted(numbers[table].items())]
        blocks = len(numbers["blocks"])  # one [params, FLOPs] pair per line, so that a diff shows what moved
        with open(args.write, "w") as f:
            f.write('{"blocks": {\n' + ",\n".join(lines[:blocks]) + '\n},\n"models": {\n'
                    + ",\n".join(lines[blocks:]) + "\n}}\n")
        print(f"wrote {args.write}")
    else:
        print_tables()


if __name__ == "__main__":
    main()
