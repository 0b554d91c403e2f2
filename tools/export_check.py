"""Check that the blocks and models survive deployment: torch.export, ONNX (onnxruntime) and torch.compile.

    python tools/export_check.py                              # everything (torch.compile takes minutes on CPU)
    python tools/export_check.py --no-compile                 # export + ONNX only
    python tools/export_check.py --blocks snl cc --dims 2 --models preresnet
    python tools/export_check.py --dims --models resnet segmentor   # model rows only

Rows: every registry block at every dim (1, 2, 3; cc is 2-D only), PreResNet-20 + each block, ResNet-50 + SNL,
the segmentor (dilated ResNet-50 + SNL head) and a video model (3-D ResNet-18 + a space-time SNL block).
Columns, each "ok <max relative error>" or "FAIL <why>":
  export   torch.export.export in eval mode with a dynamic batch size; the exported program against the eager
           module at the traced batch and at another one (relative error <= 1e-5, float32).
  onnx     torch.onnx.export (dynamo exporter) with a dynamic batch size (blocks: also dynamic spatial sizes),
           run in onnxruntime at the traced shape, another batch size and, for blocks, another input size
           (relative error <= 1e-4). Needs onnx, onnxscript, onnxruntime (`pip install .[export]`).
  compile  torch.compile(fullgraph=True) in training mode (dropout off): outputs and all gradients against
           eager float64 (relative error <= 1e-4, or 10x eager float32's own where that is larger, which the
           cell then shows); the column also gives the compile time (first forward + backward; less when
           inductor's on-disk cache already holds the kernels from an earlier run).
Relative error = max |got - want| / max |want| per output / gradient tensor (max |want| at least 1e-3 of the
largest entry of all the tensors compared, for gradients that are 0 in exact math). Inputs are float32 on the CPU,
norm layers randomized (weights, biases, running statistics, CC's gamma), so no block is the identity.
Exit status 1 if any cell failed, else 0.
"""
import argparse
import copy
import sys
import time
import warnings

import torch
from torch import nn

import tools  # noqa: F401  (python tools/x.py: puts the repository root on sys.path, tools/tools.py)
from lib import NONLOCAL_BLOCKS, build_nonlocal
from tools._checks import failure_summary, one_line, randomized

EXPORT_TOL, ONNX_TOL, COMPILE_TOL = 1e-5, 1e-4, 1e-4
# A tensor's error is relative to its largest entry, but to at least this fraction of the largest entry of all the
# tensors compared: a gradient that is 0 in exact math (CC's key bias: the softmax ignores it) is rounding noise.
NOISE_FLOOR = 1e-3
CHANNELS, PLANES = 8, 4
SPATIAL = {1: (20,), 2: (6, 5), 3: (3, 4, 3)}  # N = 20, 30, 36 >= 4 C': SNL's eager path is the fused one
OTHER_SPATIAL = {1: (17,), 2: (7, 6), 3: (3, 3, 5)}  # the second input size of the ONNX check
BATCH, OTHER_BATCH = 2, 3
MODELS = ("preresnet", "resnet", "segmentor", "video")


def rel_err(got, want, floor=0.0):
    """max |got - want| / max(max |want|, floor) (the absolute error where both are 0)."""
    got, want = got.detach().double(), want.detach().double()
    scale = max(want.abs().max().item(), floor)
    return (got - want).abs().max().item() / (scale if scale > 0 else 1.0)


def outputs(result):
    """The tensors a model returns, as a list (the segmentor returns a dict)."""
    if isinstance(result, dict):
        return list(result.values())
    return list(result) if isinstance(result, (tuple, list)) else [result]


def compare(got, want, tol, what):
    """The largest relative error of the tensors got vs want; Failure if above tol."""
    got, want = outputs(got), outputs(want)
    if len(got) != len(want):
        raise Failure(f"{what}: {len(got)} outputs instead of {len(want)}")
    floor = NOISE_FLOOR * max(w.detach().abs().max().item() for w in want)
    errors = [rel_err(g, w, floor) for g, w in zip(got, want)]
    if not max(errors) <= tol:  # also catches NaN
        raise Failure(f"{what}: relative error {max(errors):.1e} > {tol:.0e}")
    return max(errors)


class Failure(Exception):
    """A check that ran and gave wrong numbers (the message says which)."""


def sample(shape, batch=BATCH, seed=0):
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))


def dynamic_shapes(x, spatial):
    """Batch (and, if spatial, every spatial dim) dynamic; AUTO lets export keep a dim static if it must."""
    dims = {0: torch.export.Dim.DYNAMIC}
    if spatial:
        dims.update({i: torch.export.Dim.AUTO for i in range(2, x.dim())})
    return ({k: v for k, v in dims.items()},)


def check_export(model, x, others=()):
    """torch.export.export of model (eval) with a dynamic batch; the program vs eager on x and others."""
    model.eval()
    with torch.no_grad():
        program = torch.export.export(model, (x,), dynamic_shapes=dynamic_shapes(x, spatial=False))
        exported = program.module()
        return max(compare(exported(inp), model(inp), EXPORT_TOL, f"input {tuple(inp.shape)}")
                   for inp in (x, *others))


def check_onnx(model, x, others=(), spatial=False):
    """torch.onnx.export (dynamo) with a dynamic batch (and spatial sizes), run in onnxruntime on x and others."""
    import onnxruntime
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x,), dynamo=True, verbose=False,
                                    dynamic_shapes=dynamic_shapes(x, spatial))
    session = onnxruntime.InferenceSession(program.model_proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    errors = []
    with torch.no_grad():
        for inp in (x, *others):
            got = [torch.from_numpy(y) for y in session.run(None, {name: inp.numpy()})]
            errors.append(compare(got, model(inp), ONNX_TOL, f"input {tuple(inp.shape)}"))
    return max(errors)


def check_compile(model, x):
    """torch.compile(fullgraph=True) in training mode (dropout off): outputs and every gradient against eager.

    Both float32 results are compared with eager float64: the compiled one may be off by COMPILE_TOL or by 10x
    what eager float32 is off, whichever is larger (some gradients, e.g. CGNL's dL/dg, are sums with heavy
    cancellation, whose float32 value depends on the order of the additions; in ResNet-50 at batch 2 the
    BatchNorms over 2x2 maps make some weight gradients ill-conditioned). Returns (max relative error of the
    compiled results vs float64, the same of eager float32, seconds of the first compiled forward + backward)."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.eval()
    # BatchNorm updates its running statistics: each run gets its own copy
    exact, compiled_model = copy.deepcopy(model).double(), copy.deepcopy(model)
    torch._dynamo.reset()
    compiled = torch.compile(compiled_model, fullgraph=True)
    results = []
    for module, run, inp in ((exact, exact, x.double()), (model, model, x), (compiled_model, compiled, x)):
        inp = inp.clone().requires_grad_()
        start = time.perf_counter()
        out = outputs(run(inp))
        grads = [torch.randn(o.shape, generator=torch.Generator().manual_seed(i)).to(o.dtype)  # same draws
                 for i, o in enumerate(out)]
        torch.autograd.backward(out, grads)
        results.append((out + [inp.grad] + [p.grad for p in module.parameters()], time.perf_counter() - start))
    (want, _), (eager, _), (got, seconds) = results
    eager_error = compare(eager, want, float("inf"), "eager float32")
    error = compare(got, want, max(COMPILE_TOL, 10 * eager_error), "compiled outputs and gradients")
    return error, eager_error, seconds


def block_rows(names, dims):
    """(label, build, input shape, spatial-dynamic ONNX) for every block and dim asked for."""
    for name in names:
        for dim in dims:
            if name == "cc" and dim != 2:
                continue
            yield (f"{name} dim={dim}", lambda name=name, dim=dim: build_nonlocal(name, CHANNELS, PLANES, dim=dim),
                   (CHANNELS, *SPATIAL[dim]), (CHANNELS, *OTHER_SPATIAL[dim]))


def model_rows(names, models):
    from models import build_model
    from models.segmentation import build_segmentor
    if "preresnet" in models:
        for name in names:
            yield (f"PreResNet-20 + {name}", lambda name=name: build_model("preresnet", 20, 10, nl_type=name),
                   (3, 16, 16), None)
    if "resnet" in models:
        yield "ResNet-50 + snl", lambda: build_model("resnet", 50, 10, nl_type="snl"), (3, 64, 64), None
    if "segmentor" in models:
        yield ("segmentor ResNet-50 + snl", lambda: build_segmentor(num_classes=5, nl_type="snl", aux=False),
               (3, 32, 32), None)
    if "video" in models:
        yield ("3-D ResNet-18 + snl (video)", lambda: build_model("resnet3d", 18, 10, nl_type="snl", nl_layer=2),
               (3, 4, 32, 32), None)


def run_row(build, shape, other_shape, columns):
    """{column: cell text} for one row; a failing cell does not stop the others."""
    torch.manual_seed(0)
    model = randomized(build())
    x = sample(shape)
    others = [sample(shape, OTHER_BATCH, seed=1)] + ([sample(other_shape, seed=2)] if other_shape else [])
    cells = {}
    for column in columns:
        try:
            if column == "export":
                cells[column] = f"ok {check_export(model, x, others[:1]):.1e}"
            elif column == "onnx":
                cells[column] = f"ok {check_onnx(model, x, others, spatial=other_shape is not None):.1e}"
            else:
                error, eager_error, seconds = check_compile(model, x)
                eager = f" (eager float32 {eager_error:.1e})" if error > COMPILE_TOL else ""
                cells[column] = f"ok {error:.1e}{eager} {seconds:.0f}s"
        except Exception as error:  # report every failure in the table and go on
            message = str(error) if isinstance(error, Failure) else f"{type(error).__name__}: {error}"
            cells[column] = "FAIL " + one_line(message, 120)
    return cells


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", nargs="+", default=list(NONLOCAL_BLOCKS), choices=list(NONLOCAL_BLOCKS),
                        metavar="NAME", help=f"blocks to check (default all: {', '.join(NONLOCAL_BLOCKS)})")
    parser.add_argument("--dims", nargs="*", type=int, default=[1, 2, 3], choices=[1, 2, 3],
                        help="spatial dims of the block rows (default 1 2 3; none: --dims with no values, for "
                             "model rows only)")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS,
                        help="model rows: preresnet (PreResNet-20 + each of --blocks), resnet (ResNet-50 + snl), "
                             "segmentor, video (3-D ResNet-18 + snl) (default all; none: --models with no names)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile column (the slow one)")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX column")
    args = parser.parse_args(argv)
    columns = [c for c, skip in (("export", False), ("onnx", args.no_onnx), ("compile", args.no_compile))
               if not skip]
    rows = []
    for label, build, shape, other_shape in (*block_rows(args.blocks, args.dims),
                                             *model_rows(args.blocks, args.models)):
        start = time.perf_counter()
        rows.append((label, run_row(build, shape, other_shape, columns)))
        status = "FAIL" if any(c.startswith("FAIL") for c in rows[-1][1].values()) else "ok"
        print(f"  {status:4}  {label} ({time.perf_counter() - start:.0f}s)", file=sys.stderr, flush=True)
    print(f"export_check: torch {torch.__version__}, float32 on CPU; tolerances export {EXPORT_TOL:.0e}, "
          f"onnx {ONNX_TOL:.0e}, compile {COMPILE_TOL:.0e} (relative)\n")
    print("| row | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns))
    for label, cells in rows:
        print(f"| {label} | " + " | ".join(cells[c] for c in columns) + " |")
    failed = [label for label, cells in rows if any(c.startswith("FAIL") for c in cells.values())]
    return failure_summary(failed, len(rows), "rows")


if __name__ == "__main__":
    sys.exit(main())
