"""Check this repository on a CUDA machine with one command, and print one table (check | result | detail).

    python tools/gpu_check.py                          # every check, on the first GPU
    python tools/gpu_check.py --checks blocks fused-snl
    python tools/gpu_check.py --device cpu             # the cheap checks on CPU: a smoke test of this script

Checks:
  blocks     every nonlocal block (and a few variants) forward + backward on the device in float32 against the
             CPU float64 result (relative error of every tensor <= --tol, or 10x what float32 gets on the CPU
             where the math is worse conditioned; TF32 off); NL / NS / DNL must run a fused attention
             kernel (a fallback to the unfused N x N path fails); a bf16 autocast forward must be finite.
  fused-snl  the fused one-unit SNL / A2 / NS stage (hand-written backward): torch.autograd.gradcheck in float64
             on the device, and agreement with the module-by-module (dense) path.
  train      training steps of PreResNet-20 with each block via train_val.py --dataset fake: --amp bf16,
             --amp fp16 and --channels-last (one epoch of 8 steps, then evaluation).
  compile    train_val.py --compile with SNL (fails if torch.compile fell back to eager).
  ddp        torchrun, 2 processes, NCCL, --sync-bn (needs 2+ GPUs; skipped otherwise).
  bench      tools/bench_train_step.py (plain / snl / nl at fp32 and bf16: images/s and peak memory) and
             tools/bench_blocks.py on the device.
With --device cpu the train check runs SNL with --channels-last only, compile and ddp are skipped and the
benchmarks run tiny. Exit status 1 if any check failed, else 0. On a machine without CUDA (and no --device cpu)
it prints one line saying so and exits 0.
"""
import argparse
import copy
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import tools  # noqa: F401  (python tools/x.py: puts the repository root on sys.path, tools/tools.py)
from lib import NONLOCAL_BLOCKS, build_nonlocal
from tools._checks import failure_summary, one_line, randomized

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where the commands it runs start

CHECKS = ("blocks", "fused-snl", "train", "compile", "ddp", "bench")
SOFTMAX_KINDS = ("nl", "ns", "dnl")
FUSED_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
FAKE_RUN = ["--dataset", "fake", "--input-size", "32", "--epochs", "1", "-b", "32", "--eval-freq", "1", "-j", "0",
            "--print-freq", "100", "--warmup-epochs", "0"]


class Failed(Exception):
    """A check's verdict: its message goes into the table's detail column."""


class Skipped(Exception):
    """A check that does not apply here (the reason goes into the detail column)."""


def forward_backward(block, x, grad):
    """[y, dL/dx, dL/dparameters...] for L = <block(x), grad>."""
    block.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    y = block(x)
    y.backward(grad)
    return [y.detach(), x.grad] + [p.grad for p in block.parameters()]


def float64_reference(block):
    """(block in float64 on the CPU, input, output gradient, [y, dx, dparams]): the exact side."""
    reference = copy.deepcopy(block).double().cpu()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 8, 8, generator=gen, dtype=torch.float64)  # N = 64 >= 4 C': the fused SNL path
    grad = torch.randn(2, 16, 8, 8, generator=gen, dtype=torch.float64)
    return x, grad, forward_backward(reference, x, grad)


def rel_errs(got, want):
    """Relative error of every tensor (0 for an exactly-zero reference, e.g. CC's key bias gradient)."""
    return [((g.double().cpu() - w).norm() / w.norm()).item() if w.norm() > 1e-12 else 0.0
            for g, w in zip(got, want)]


def max_rel_err(got, want):
    return max(rel_errs(got, want))


def block_variants():
    for kind in NONLOCAL_BLOCKS:
        yield kind, kind, {}
    yield "nl is_sys", "nl", dict(is_sys=True)
    yield "snl stage_num=2", "snl", dict(stage_num=2)
    yield "snl dense", "snl", dict(affinity_path="dense")
    yield "cc stage_num=2", "cc", dict(stage_num=2)


def check_blocks(ctx):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    for label, kind, kwargs in block_variants():
        def check(kind=kind, kwargs=kwargs):
            torch.manual_seed(0)
            block = randomized(build_nonlocal(kind, 16, 8, **kwargs))
            x, grad, want = float64_reference(block)
            # float32's own error bound, tensor by tensor: CGNL's g gradient, e.g., sums x over positions and
            # loses ~1e-3 of its digits in float32 on any device
            cpu32 = rel_errs(forward_backward(copy.deepcopy(block).float(), x.float(), grad.float()), want)
            on_device = copy.deepcopy(block).float().to(ctx.device)
            x, grad = x.float().to(ctx.device), grad.float().to(ctx.device)
            errors = rel_errs(forward_backward(on_device, x, grad), want)
            if any(not error <= max(ctx.tol, 10 * bound) for error, bound in zip(errors, cpu32)):
                raise Failed(f"max relative error {max(errors):.1e} vs CPU float64 (CPU float32: {max(cpu32):.1e})")
            notes = [f"max rel err {max(errors):.1e} (y, dx, dparams; CPU float32 {max(cpu32):.1e})"]
            if kind in SOFTMAX_KINDS:
                backends = FUSED_BACKENDS if ctx.device.type == "cuda" else [SDPBackend.FLASH_ATTENTION]
                with sdpa_kernel(backends):  # raises where only the unfused (N x N) path could run
                    forward_backward(on_device, x, grad)
                notes.append("fused attention kernel")
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16):
                y = on_device(x)
            if not torch.isfinite(y).all():
                raise Failed("bf16 autocast forward is not finite")
            return "; ".join(notes + ["bf16 autocast finite"])
        yield f"block {label}", check


def check_fused_snl(ctx):
    for kind, kwargs in (("snl", {}), ("a2", {}), ("ns", dict(is_norm=True))):
        def check(kind=kind, kwargs=kwargs):
            torch.manual_seed(0)
            fused = randomized(build_nonlocal(kind, 8, 2, **kwargs)).double().to(ctx.device)
            x = torch.randn(2, 8, 4, 4, dtype=torch.float64, device=ctx.device)  # N = 16 >= 4 C'
            if hasattr(fused, "_fusable") and not fused._fusable(x):
                raise Failed("the fused path does not apply to the test input")
            names = [name for name, _ in fused.named_parameters()]

            def function(x, *params):
                return torch.func.functional_call(fused, dict(zip(names, params)), (x,))

            inputs = (x.requires_grad_(),) + tuple(p.detach().requires_grad_() for p in fused.parameters())
            torch.autograd.gradcheck(function, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)
            dense = copy.deepcopy(fused)
            dense.affinity_path = "dense"
            grad = torch.randn_like(x)
            error = max_rel_err(forward_backward(fused, x, grad), forward_backward(dense, x, grad))
            if not error < 1e-10:
                raise Failed(f"fused vs module path: max relative error {error:.1e} (float64)")
            return f"gradcheck ok; vs module path {error:.1e} (float64)"
        yield f"fused {kind} backward", check


def run_command(argv, timeout, env=None):
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                            env=dict(os.environ, **(env or {})))
    output = result.stdout + result.stderr
    if result.returncode != 0:
        tail = [line for line in output.splitlines() if line.strip()][-1:] or ["(no output)"]
        raise Failed(f"exit {result.returncode}: {tail[0]}")
    return output, time.perf_counter() - start


def train_run(ctx, name, extra):
    """train_val.py on fake data; returns (final train loss, seconds, all output)."""
    out_dir = os.path.join(ctx.tmp, name)
    argv = [sys.executable, "train_val.py", *FAKE_RUN, "--device", ctx.device_arg, "--output-dir", out_dir,
            "--checkpoints", name, *extra]
    output, seconds = run_command(argv, timeout=ctx.timeout)
    with open(os.path.join(out_dir, "fake", "20", name, "metrics.jsonl")) as f:
        loss = [json.loads(line) for line in f][-1]["train_loss"]
    if not math.isfinite(loss):
        raise Failed(f"train loss {loss}")
    return loss, seconds, output


def check_train(ctx):
    kinds = ("snl",) if ctx.smoke else tuple(NONLOCAL_BLOCKS)
    modes = ((["--channels-last"],) if ctx.smoke else (["--amp", "bf16"], ["--amp", "fp16"], ["--channels-last"]))
    for kind in kinds:
        for mode in modes:
            def check(kind=kind, mode=mode):
                name = f"{kind}-{'-'.join(m.strip('-') for m in mode)}"
                loss, seconds, _ = train_run(ctx, name, ["--nl-type", kind, *mode])
                return f"8 steps + eval, train loss {loss:.3f}, {seconds:.0f} s"
            yield f"train {kind} {' '.join(mode)}", check


def check_compile(ctx):
    def check():
        if ctx.smoke:
            raise Skipped("not in the CPU smoke mode")
        loss, seconds, output = train_run(ctx, "snl-compile", ["--nl-type", "snl", "--compile"])
        for sign in ("--compile failed", "WON'T CONVERT", "Backend compiler", "falling back to eager"):
            if sign in output:
                raise Failed(f"torch.compile fell back to eager ({sign!r} in the output)")
        return f"snl, train loss {loss:.3f}, {seconds:.0f} s (compilation included)"
    yield "compile (train_val.py --compile)", check


def check_ddp(ctx):
    def check():
        if ctx.device.type != "cuda" or torch.cuda.device_count() < 2:
            found = torch.cuda.device_count() if torch.cuda.is_available() else 0
            raise Skipped(f"needs 2+ GPUs, found {found}")
        out_dir = os.path.join(ctx.tmp, "ddp")
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "train_val.py", *FAKE_RUN, "--device", "cuda", "--sync-bn", "--nl-type", "snl", "--output-dir",
                out_dir, "--checkpoints", "ddp"]
        _, seconds = run_command(argv, timeout=ctx.timeout)
        return f"2 processes, NCCL, --sync-bn: {seconds:.0f} s"
    yield "ddp (torchrun 2 GPUs)", check


def table_rows(output):
    """Data rows of the markdown tables a benchmark printed, as lists of cells."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in output.splitlines()
            if line.startswith("| ") and not line.startswith("|---")]
    return [row for row in rows if row[0] not in ("model", "shape")]


def bench_rows(ctx, tool, *flags):
    """The table rows of one benchmark tool run with flags; Failed when it printed none."""
    rows = table_rows(run_command([sys.executable, tool, *flags], timeout=ctx.timeout)[0])
    if not rows:
        raise Failed("no table in the output")
    return rows


def check_bench(ctx):
    small = ["--batch", "8", "--rounds", "1", "--warmup", "0"] if ctx.smoke else ["--rounds", "5"]
    blocks = ["snl"] if ctx.smoke else ["snl", "nl"]
    for amp in ("off", "bf16"):
        def check(amp=amp):
            rows = bench_rows(ctx, "tools/bench_train_step.py", "--device", ctx.device_arg, "--amp", amp,
                              "--blocks", *blocks, *small)
            return "; ".join(f"{r[0]} {r[2]} img/s {r[3].split()[0]} {r[4]} MiB" for r in rows)
        yield f"bench train step ({'fp32' if amp == 'off' else amp})", check

    def check_blocks_bench():
        rows = bench_rows(ctx, "tools/bench_blocks.py", "--devices", ctx.device_arg, "--shapes", "cifar1",
                          "--blocks", *blocks, *small)
        return "; ".join(f"{r[2]} {r[3]} ms {r[5]} MiB" for r in rows)
    yield "bench blocks (C=16 32x32)", check_blocks_bench


CHECK_FUNCTIONS = {"blocks": check_blocks, "fused-snl": check_fused_snl, "train": check_train,
                   "compile": check_compile, "ddp": check_ddp, "bench": check_bench}


def run_checks(ctx, names):
    """[(check, result, detail)]: result ok / FAIL / skip; a check that raises anything is a FAIL."""
    rows = []
    for name in names:
        for label, check in CHECK_FUNCTIONS[name](ctx):
            try:
                rows.append((label, "ok", check()))
            except Skipped as reason:
                rows.append((label, "skip", str(reason)))
            except Exception as error:  # report every failure in the table and go on
                message = str(error) if isinstance(error, Failed) else f"{type(error).__name__}: {error}"
                rows.append((label, "FAIL", one_line(message)))
            print(f"  {rows[-1][1]:4}  {label}", file=sys.stderr, flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a smoke test (default cuda)")
    parser.add_argument("--checks", nargs="+", default=list(CHECKS), choices=CHECKS, help="which checks to run")
    parser.add_argument("--tol", type=float, default=1e-4, help="float32 vs float64 relative error allowed")
    parser.add_argument("--timeout", type=int, default=900, help="seconds allowed to each training / bench run")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine, nothing checked (--device cpu runs a CPU smoke test)")
        return 0
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        ctx = argparse.Namespace(device=device, device_arg=args.device, smoke=device.type == "cpu", tol=args.tol,
                                 timeout=args.timeout, tmp=tmp)
        rows = run_checks(ctx, args.checks)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke mode)"
    print(f"gpu_check on {where}, torch {torch.__version__}\n")
    print("| check | result | detail |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return failure_summary([row[0] for row in rows if row[1] == "FAIL"], len(rows), "checks")


if __name__ == "__main__":
    sys.exit(main())
