#!/usr/bin/env python3
"""The spectral view of a trained model: graph spectra of its nonlocal blocks and their learned filter responses.

    python tools/spectrum.py save_model/cifar10/20/snl/model_best.pth.tar --indices 0 1 2 3
    python tools/spectrum.py CHECKPOINT img1.png img2.png --output spectra/snl.pdf --json spectra/snl.json
    python tools/spectrum.py save_model/cityscapes/resnet50/snl/model_best.pth.tar street.png  # the head's block
    python tools/spectrum.py save_model/ucf101/resnet3d50/snl/model_best.pth.tar --indices 0 1   # validation clips

A stage-based block builds a graph over the N positions of its input with adjacency A (B, N, N); with SNL's
normalized symmetric A, the Laplacian L = I - A has its eigenvalues in [0, 2] (README.md, "What SNL computes"). For
each block and a batch of images this tool computes the eigenvalues of L in float64 (the block is run in float64:
torch.linalg.eigvalsh when A is symmetric, else torch.linalg.eigvals, real parts), and draws their histogram over
the batch. Where the block has `filter_response(lam)` (the frequency response of each unit's linear part, a
(C, C') matrix per lam), the second panel shows its Frobenius norm over lam in [0, 2], one curve per unit.
Criss-cross attention gets the spectrum of I - A with A its row + column softmax weights; CGNL has no A and is
skipped. Writes one picture (matplotlib: .png, .pdf, .svg, ...) and a JSON of every number drawn, by default
spectrum_<checkpoint name>.png / .json in the checkpoint's run folder; the title names the run and the checkpoint.
A video checkpoint (train_video.py) takes video files, frame folders or validation videos (default the first 8),
each as its validation clip; a space-time block's graph is over its N = T H W positions.
"""
import copy
import json
import math
import os
import sys

import numpy as np
import torch

import tools  # noqa: F401  (python tools/x.py: puts the repository root on sys.path, tools/tools.py)
from lib.engine.logger import replace_text
from lib.errors import ConfigError
from tools._attention import attention_matrix, block_kind, inputs_per_image, nonlocal_blocks
from tools._inputs import load_images
from tools._loaded_model import checkpoint_tool_parser, load_model
from tools._outputs import (
    check_output_file,
    checkpoint_stem,
    image_suffixes,
    main_reporting_errors,
    pyplot,
    run_folder,
    run_label,
    save_figure,
)

DEFAULT_IMAGES = 8
NO_RESPONSE = "no filter_response: spectrum only"


def laplacian_eigenvalues(block, x):
    """(eigenvalues of L = I - A (B, N) float64, whether A is symmetric) for the block's input x (B, C, H, W) or
    (B, C, T, H, W)."""
    block64 = copy.deepcopy(block).double()
    att = attention_matrix(block64, x.double())  # (B, N, N) float64
    laplacian = torch.eye(att.shape[-1], dtype=att.dtype, device=att.device) - att
    symmetric = bool(torch.allclose(att, att.transpose(1, 2), rtol=0, atol=1e-12 * max(1.0, att.abs().max().item())))
    if symmetric:
        return torch.linalg.eigvalsh(laplacian).cpu(), True
    return torch.linalg.eigvals(laplacian).real.cpu(), False


def response_norms(block, points):
    """(lam (L,), ||g_k(lam)||_F (units, L)) of the block's units, or None when the block has no filter_response."""
    if not hasattr(block, "filter_response"):
        return None
    dtype = next(block.parameters()).dtype
    lam = torch.linspace(0, 2, points, dtype=dtype, device=next(block.parameters()).device)
    with torch.no_grad():
        response = block.filter_response(lam)  # (units, L, C, Cz)
    return lam.cpu(), response.flatten(2).norm(dim=-1).double().cpu()


def analyse(loaded, images, points, bins):
    """The JSON-ready numbers of every block (and the blocks skipped, with why)."""
    blocks = nonlocal_blocks(loaded.model)
    if not blocks:
        raise ConfigError("the checkpoint's model has no nonlocal block: no graph to take the spectrum of")
    drawable = [(name, module) for name, module in blocks if block_kind(module) != "cgnl"]
    skipped = [{"block": name, "reason": "CGNL has no position-to-position affinity A"}
               for name, module in blocks if block_kind(module) == "cgnl"]
    if not drawable:
        raise ConfigError("the model's only nonlocal blocks are CGNL, which has no affinity matrix A and so no "
                          "graph spectrum")
    inputs = inputs_per_image(loaded, drawable, images)
    results = []
    for name, module in drawable:
        per_image = [laplacian_eigenvalues(module, captured[name]) for captured in inputs]
        symmetric = all(sym for _, sym in per_image)
        values = [eigenvalues[0].numpy() for eigenvalues, _ in per_image]  # one (N,) per image; N may differ
        flat = np.concatenate(values)
        low, high = min(0.0, float(flat.min())), max(2.0, float(flat.max()))
        counts, edges = np.histogram(flat, bins=bins, range=(low, high))
        sizes = [list(captured[name].shape[2:]) for captured in inputs]
        entry = {"block": name, "type": type(module).__name__, "positions": [math.prod(size) for size in sizes],
                 "feature_size": sizes, "symmetric": symmetric,
                 "method": "eigvalsh" if symmetric else "eigvals (real parts)",
                 "eigenvalues": [v.tolist() for v in values],
                 "histogram": {"counts": counts.tolist(), "edges": edges.tolist()}}
        response = response_norms(module, points)
        if response is None:
            entry["response"], entry["note"] = None, NO_RESPONSE
        else:
            lam, norms = response
            entry["response"] = {"lam": lam.tolist(), "frobenius_norm": norms.tolist()}
        results.append(entry)
    return results, skipped


def draw(results, title, path):
    plt = pyplot()
    fig, axes = plt.subplots(len(results), 2, figsize=(10, 3.2 * len(results)), squeeze=False)
    for (hist_ax, resp_ax), entry in zip(axes, results):
        hist = entry["histogram"]
        edges = np.asarray(hist["edges"])
        hist_ax.bar(edges[:-1], hist["counts"], width=np.diff(edges), align="edge", color="tab:blue")
        positions = sorted(set(entry["positions"]))
        hist_ax.set_title(f"{entry['block']} ({entry['type']}): eigenvalues of L = I - A, N = "
                          f"{', '.join(map(str, positions))}", fontsize=9)
        hist_ax.set_xlabel("lambda" + ("" if entry["symmetric"] else " (real part)"))
        hist_ax.set_yscale("log")  # A has rank <= 2C' < N, so most eigenvalues of L sit at exactly 1
        hist_ax.set_ylabel("count over the batch (log)")
        if entry["response"] is None:
            resp_ax.text(0.5, 0.5, f"{entry['type']}: {NO_RESPONSE}", ha="center", va="center", fontsize=9,
                         transform=resp_ax.transAxes)
            resp_ax.set_axis_off()
            continue
        lam = entry["response"]["lam"]
        for k, norms in enumerate(entry["response"]["frobenius_norm"]):
            resp_ax.plot(lam, norms, label=f"unit {k}")
        resp_ax.set_title(f"{entry['block']}: learned response ||g(lambda)||_F", fontsize=9)
        resp_ax.set_xlabel("lambda")
        resp_ax.set_xlim(0, 2)
        resp_ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=80)
    plt.close(fig)


def get_parser():
    parser = checkpoint_tool_parser(__doc__)
    parser.add_argument("--num-images", "--num_images", "--num-clips", dest="num_images", type=int,
                        default=DEFAULT_IMAGES, help=f"without files or --indices: the first N validation images "
                        f"(clips) (default {DEFAULT_IMAGES})")
    parser.add_argument("--bins", type=int, default=41, help="histogram bins over [0, 2] or the eigenvalues' "
                        "range if wider (default 41: an odd number keeps lambda = 1 inside one bin)")
    parser.add_argument("--points", type=int, default=201, help="lambda samples in [0, 2] for the responses "
                        "(default 201)")
    parser.add_argument("--output", help="the picture: .png, .pdf, .svg, ... (default: spectrum_<checkpoint "
                        "name>.png in the checkpoint's run folder)")
    parser.add_argument("--json", help="the numbers (default: the picture's name with .json)")
    return parser


def main(argv=None):
    return main_reporting_errors("spectrum.py", run, get_parser().parse_args(argv))


def run(args):
    if args.bins < 1 or args.points < 2 or args.num_images < 1:
        raise ConfigError("--bins and --num-images must be at least 1, --points at least 2")
    stem = checkpoint_stem(args.checkpoint)
    output = args.output or os.path.join(run_folder(args.checkpoint), f"spectrum_{stem}.png")
    json_path = args.json or os.path.splitext(output)[0] + ".json"
    check_output_file("--output", output, image_suffixes())
    check_output_file("--json", json_path)
    loaded = load_model(args)
    images = load_images(args, loaded, default_count=args.num_images)
    results, skipped = analyse(loaded, images, args.points, args.bins)
    unit = "clip" if loaded.task == "video" else "image"
    for entry in skipped:
        print(f"note: skipped {entry['block']}: {entry['reason']}")
    for entry in results:
        values = np.concatenate([np.asarray(v) for v in entry["eigenvalues"]])
        print(f"{entry['block']} ({entry['type']}, N = {', '.join(map(str, sorted(set(entry['positions']))))}, "
              f"{entry['method']}): eigenvalues in [{values.min():.6f}, {values.max():.6f}] over "
              f"{len(entry['eigenvalues'])} {unit}(s)" + (f"; note: {entry['note']}" if entry.get("note") else ""))
    for path in (output, json_path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    replace_text(json_path, json.dumps({"checkpoint": args.checkpoint, "task": loaded.task,
                                        "images": [name for name, _, _ in images], "blocks": results,
                                        "skipped": skipped}))  # whole or not at all: a full disk leaves no half
    progress = f" ({loaded.progress})" if loaded.progress else ""
    draw(results, f"{run_label(args.checkpoint)}{progress}: {len(images)} {unit}(s)", output)
    print(f"wrote {output} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
