"""Check this repository on a CUDA machine with one command, and print one table (check | result | detail).

    python tools/gpu_check.py                          # every check, on the first GPU
    python tools/gpu_check.py --checks blocks fused-snl
    python tools/gpu_check.py --device cpu             # the checks on CPU: a smoke test of this script

Checks:
  blocks     every nonlocal block (and a few variants) forward + backward on the device in float32 against the
             CPU float64 result (relative error of every tensor <= --tol, or 10x what float32 gets on the CPU
             where the math is worse conditioned; TF32 off), at dim 2 and, for every block that takes them, dim 1
             (sequences) and dim 3 (video); NL / NS / DNL / gsnl must call scaled_dot_product_attention and run it
             with a fused kernel (a fallback to the unfused N x N path fails); a bf16 autocast forward must be
             finite.
  fused-snl  the fused one-unit SNL / A2 / NS stage (hand-written backward): torch.autograd.gradcheck in float64
             on the device, and agreement with the module-by-module (dense) path.
  train      training steps of PreResNet-20 with each block via train_val.py --dataset fake: --amp bf16,
             --amp fp16 and --channels-last (one epoch of 8 steps, then evaluation).
  entry      every training entry point (ENTRY_POINTS: train_val.py, train_seg.py with its bilinear / aux heads,
             train_video.py with dim-3 blocks) on its fake data with --amp bf16 --channels-last: a finite loss.
  resume     train_val.py --amp fp16 --deterministic for 2 epochs, against 1 epoch then --resume auto from the
             checkpoint it wrote (optimizer, GradScaler, RNG states): the same final weights, bit for bit.
  deterministic  two train_val.py --deterministic runs with the same flags: the same final weights, bit for bit.
  compile    torch._dynamo.explain of every block and of PreResNet-20 + SNL: fails on any graph break; then
             train_val.py --compile with SNL (fails if torch.compile fell back to eager).
  ddp        torchrun, 2 processes (NCCL; gloo with --device cpu), --sync-bn: the run's checkpoint says 2
             processes, every validation image counted once, and its losses agree with 1 process at the same
             global batch (needs 2+ GPUs).
  bench      tools/bench_train_step.py (plain / snl / nl at fp32 and bf16: images/s and peak memory) and
             tools/bench_blocks.py on the device.
Exit status 0 only if every check that was asked for ran and passed: a failed check, or one skipped on a GPU
machine (e.g. ddp with one GPU), gives 1. Without CUDA (and no --device cpu) it prints one line and exits 1.
--device cpu is the smoke mode: cheaper variants (train: SNL with --channels-last; entry points without --amp;
tiny benchmarks); a check that cannot run on the CPU (train_val.py --compile) is skipped there, with exit 0.
"""
import argparse
import copy
import glob
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

CHECKS = ("blocks", "fused-snl", "train", "entry", "resume", "deterministic", "compile", "ddp", "bench")
SOFTMAX_KINDS = ("nl", "ns", "dnl", "gsnl")  # the blocks whose affinity is a softmax: scaled_dot_product_attention
IMAGE_ONLY_KINDS = ("cc",)  # criss-cross attention is defined on images alone
# One input shape per block dim, N = 64 positions each (>= 4 C': the fused SNL path).
SHAPES = {1: (2, 16, 64), 2: (2, 16, 8, 8), 3: (2, 16, 4, 4, 4)}
FUSED_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
FAKE_RUN = ["--dataset", "fake", "--input-size", "32", "--epochs", "1", "-b", "32", "--eval-freq", "1", "-j", "0",
            "--print-freq", "100", "--warmup-epochs", "0"]
# Every training entry point, on its own fake data, tiny: adding one (re-ID, detection) is adding its line here.
ENTRY_POINTS = (
    ("train_val.py", FAKE_RUN + ["--nl-type", "snl"]),
    ("train_seg.py", ["--dataset", "fake", "--crop-size", "32", "64", "--img-scale", "64", "32", "-b", "2",
                      "--iters", "4", "-j", "0", "--print-freq", "100"]),
    ("train_video.py", ["--dataset", "fake", "--backbone", "mc3", "--arch", "18", "--clip-len", "4", "--frame-size",
                        "32", "-b", "2", "--epochs", "1", "-j", "0", "--print-freq", "100"]),
)


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


def float64_reference(block, dim=2):
    """(block in float64 on the CPU, input, output gradient, [y, dx, dparams]): the exact side."""
    reference = copy.deepcopy(block).double().cpu()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(*SHAPES[dim], generator=gen, dtype=torch.float64)
    grad = torch.randn(*SHAPES[dim], generator=gen, dtype=torch.float64)
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
    for dim in (1, 3):
        for kind in NONLOCAL_BLOCKS:
            if kind not in IMAGE_ONLY_KINDS:
                yield f"{kind} dim={dim}", kind, dict(dim=dim)
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
            x, grad, want = float64_reference(block, kwargs.get("dim", 2))
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
                # sdpa_kernel raises where only the unfused (N x N) path could run, but proves nothing for a
                # block that computes its softmax without scaled_dot_product_attention: count the calls too.
                with sdpa_kernel(backends), counting_sdpa() as calls:
                    forward_backward(on_device, x, grad)
                if not calls:
                    raise Failed("never called scaled_dot_product_attention: the unfused N x N path ran")
                notes.append("fused attention kernel")
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16):
                y = on_device(x)
            if not torch.isfinite(y).all():
                raise Failed("bf16 autocast forward is not finite")
            return "; ".join(notes + ["bf16 autocast finite"])
        yield f"block {label}", check


class counting_sdpa:
    """Counts the calls of F.scaled_dot_product_attention in its block (the blocks call it as F.<name>)."""

    def __enter__(self):
        self.real, self.calls = torch.nn.functional.scaled_dot_product_attention, []

        def counted(*args, **kwargs):
            self.calls.append(1)
            return self.real(*args, **kwargs)
        torch.nn.functional.scaled_dot_product_attention = counted
        return self.calls

    def __exit__(self, *exc):
        torch.nn.functional.scaled_dot_product_attention = self.real


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


def train_run(ctx, name, extra, argv=FAKE_RUN, script="train_val.py", launcher=(), device=None):
    """script (started by launcher, e.g. torchrun's arguments) on fake data in its own folder; returns
    (last train loss, seconds, all output, run folder)."""
    out_dir = os.path.join(ctx.tmp, name)
    command = [sys.executable, *launcher, script, *argv, "--device", device or ctx.device_arg, "--output-dir",
               out_dir, "--checkpoints", name, *extra]
    output, seconds = run_command(command, timeout=ctx.timeout)
    metrics = glob.glob(os.path.join(out_dir, "**", name, "metrics.jsonl"), recursive=True)
    if len(metrics) != 1:
        raise Failed(f"{script} wrote {len(metrics)} metrics.jsonl files under {out_dir}, not one")
    with open(metrics[0]) as f:
        row = [json.loads(line) for line in f][-1]
    loss = next((value for key, value in row.items() if "loss" in key and isinstance(value, (int, float))), None)
    if loss is None or not math.isfinite(loss):
        raise Failed(f"train loss {loss} in {metrics[0]}")
    return loss, seconds, output, os.path.dirname(metrics[0])


def check_train(ctx):
    kinds = ("snl",) if ctx.smoke else tuple(NONLOCAL_BLOCKS)
    modes = ((["--channels-last"],) if ctx.smoke else (["--amp", "bf16"], ["--amp", "fp16"], ["--channels-last"]))
    for kind in kinds:
        for mode in modes:
            def check(kind=kind, mode=mode):
                name = f"{kind}-{'-'.join(m.strip('-') for m in mode)}"
                loss, seconds, _, _ = train_run(ctx, name, ["--nl-type", kind, *mode])
                return f"8 steps + eval, train loss {loss:.3f}, {seconds:.0f} s"
            yield f"train {kind} {' '.join(mode)}", check


def check_entry_points(ctx):
    mode = ["--channels-last"] if ctx.smoke else ["--amp", "bf16", "--channels-last"]
    for script, argv in ENTRY_POINTS:
        def check(script=script, argv=argv):
            name = "entry-" + os.path.splitext(script)[0]
            loss, seconds, _, _ = train_run(ctx, name, mode, argv=argv, script=script)
            return f"fake data {' '.join(mode)}: loss {loss:.3f}, {seconds:.0f} s"
        yield f"entry point {script}", check


def final_checkpoint(run_dir):
    """The newest epoch checkpoint of a train_val.py run folder (not model_best), loaded on the CPU."""
    paths = [p for p in glob.glob(os.path.join(run_dir, "*.pth.tar")) if not p.endswith("model_best.pth.tar")]
    if not paths:
        raise Failed(f"no checkpoint in {run_dir}")
    return torch.load(max(paths, key=os.path.getmtime), map_location="cpu", weights_only=False)


def weights_difference(a, b):
    """(names of tensors that differ, largest absolute difference) between two state_dicts."""
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    largest = max(((a[k].double() - b[k].double()).abs().max().item() for k in differ), default=0.0)
    return differ, largest


# Two epochs with an lr step after the first: the resumed run has to continue the schedule, the momentum buffers
# and (fp16) the GradScaler's scale to end where the straight run does.
RESUME_RUN = ["--deterministic", "--lr-steps", "1", "--seed", "7"]


def check_resume(ctx):
    def check():
        amp = [] if ctx.smoke else ["--amp", "fp16"]
        _, _, _, straight = train_run(ctx, "straight", [*RESUME_RUN, *amp, "--epochs", "2"])
        train_run(ctx, "resumed", [*RESUME_RUN, *amp, "--epochs", "1"])
        _, _, output, resumed = train_run(ctx, "resumed", [*RESUME_RUN, *amp, "--epochs", "2", "--resume", "auto"])
        if "resuming" not in output:
            raise Failed("the second run did not resume")
        want, got = final_checkpoint(straight), final_checkpoint(resumed)
        held = [key for key in ("optimizer", "scaler", "rng_states") if got.get(key)]
        missing = {"optimizer", "rng_states", *(["scaler"] if amp else [])} - set(held)
        cuda_rng = ctx.device.type != "cuda" or all(s.get("cuda_device") is not None or len(s.get("cuda", []))
                                                    for s in got["rng_states"])  # (the run's own GPU's, or all)
        if missing or not cuda_rng:
            raise Failed(f"checkpoint lacks {', '.join(sorted(missing)) or 'the CUDA RNG state'}")
        differ, largest = weights_difference(want["state_dict"], got["state_dict"])
        if differ:
            raise Failed(f"{len(differ)} tensors differ from the straight run (max {largest:.1e}, e.g. {differ[0]})")
        return f"1 + 1 epochs {' '.join(amp) or 'fp32'} = 2 epochs bit for bit ({', '.join(held)} restored)"
    yield "resume from its own checkpoint", check


def check_deterministic(ctx):
    def check():
        runs = [train_run(ctx, f"deterministic-{i}", ["--deterministic", "--nl-type", "nl"])[3] for i in (1, 2)]
        differ, largest = weights_difference(*(final_checkpoint(run)["state_dict"] for run in runs))
        if differ:
            raise Failed(f"two --deterministic runs differ in {len(differ)} tensors (max {largest:.1e}, e.g. "
                         f"{differ[0]})")
        return "two runs (NL: fused attention backward), same weights bit for bit"
    yield "--deterministic reproduces", check


def graph_breaks(module, x):
    """(number of graph breaks, first reason) of torch.compile's trace of module(x)."""
    import torch._dynamo
    torch._dynamo.reset()
    explained = torch._dynamo.explain(module)(x)
    reasons = [one_line(getattr(b, "reason", b), 120) for b in explained.break_reasons]
    return explained.graph_break_count, (reasons[0] if reasons else "")


def check_compile(ctx):
    from models import build_model
    for kind in NONLOCAL_BLOCKS:
        def check_block(kind=kind):
            block = build_nonlocal(kind, 16, 8).to(ctx.device)
            count, reason = graph_breaks(block, torch.randn(*SHAPES[2], device=ctx.device))
            if count:
                raise Failed(f"{count} graph break(s): {reason}")
            return "one graph, no break"
        yield f"compile {kind}: no graph break", check_block

    def check_model():
        model = build_model("preresnet", "20", num_classes=10, nl_type="snl", nl_nums=1).to(ctx.device)
        count, reason = graph_breaks(model, torch.randn(2, 3, 32, 32, device=ctx.device))
        if count:
            raise Failed(f"{count} graph break(s): {reason}")
        return "PreResNet-20 + SNL: one graph, no break"
    yield "compile model: no graph break", check_model

    def check_run():
        if ctx.smoke:
            raise Skipped("not in the CPU smoke mode (needs a compiler toolchain and minutes)")
        loss, seconds, output, _ = train_run(ctx, "snl-compile", ["--nl-type", "snl", "--compile"])
        for sign in ("--compile failed", "WON'T CONVERT", "Backend compiler", "falling back to eager"):
            if sign in output:
                raise Failed(f"torch.compile fell back to eager ({sign!r} in the output)")
        return f"snl, train loss {loss:.3f}, {seconds:.0f} s (compilation included)"
    yield "compile (train_val.py --compile)", check_run


def ddp_processes_agree(single, double, double_dir):
    """Failed unless the 2-process run is what 1 process at the same global batch computes: 2 processes recorded,
    every validation image once, losses close. Only the classifier's Dropout(0.5) draws differ (seeded per rank):
    the epoch's mean training loss stays within 5% (measured on CPU: <2%), the final validation loss, a single
    sample of the weights, within 20% (measured: 9%); gradients left unreduced or a shard left out miss these."""
    checkpoint = final_checkpoint(double_dir)
    if checkpoint.get("world_size") != 2 or len(checkpoint.get("rng_states", [])) != 2:
        raise Failed(f"checkpoint says {checkpoint.get('world_size')} process(es), not 2")
    if double["n"] != single["n"]:
        raise Failed(f"evaluated {double['n']} images over 2 processes, 1 process {single['n']}")
    for key, tolerance in (("train_loss", 0.05), ("loss", 0.2)):
        if not math.isclose(double[key], single[key], rel_tol=tolerance):
            raise Failed(f"{key} {double[key]:.4f} (2 processes) vs {single[key]:.4f} (1 process)")


def last_record(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f][-1]


def check_ddp(ctx):
    def check():
        if ctx.device.type == "cuda" and torch.cuda.device_count() < 2:
            raise Skipped(f"needs 2+ GPUs, found {torch.cuda.device_count()}")
        device = "cuda" if ctx.device.type == "cuda" else "cpu"
        per_process = ["--sync-bn", "--nl-type", "snl", "-b", "16"]
        torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        _, seconds, _, double = train_run(ctx, "ddp", per_process, launcher=torchrun, device=device)
        _, _, _, single = train_run(ctx, "ddp-single", ["--nl-type", "snl", "-b", "32"])
        ddp_processes_agree(last_record(single), last_record(double), double)
        backend = "NCCL" if device == "cuda" else "gloo"
        return f"2 processes, {backend}, --sync-bn: agrees with 1 process, {seconds:.0f} s"
    yield "ddp (torchrun 2 processes)", check


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
                   "entry": check_entry_points, "resume": check_resume, "deterministic": check_deterministic,
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
    if device.type not in ("cuda", "cpu"):
        parser.error(f"--device {args.device}: cuda, cuda:N or cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        # A broken driver or an empty CUDA_VISIBLE_DEVICES must not pass as a checked GPU machine.
        print("gpu_check: error: no CUDA device visible here, nothing checked (--device cpu runs the CPU smoke "
              "test)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        ctx = argparse.Namespace(device=device, device_arg=args.device, smoke=device.type == "cpu", tol=args.tol,
                                 timeout=args.timeout, tmp=tmp)
        rows = run_checks(ctx, args.checks)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke mode)"
    print(f"gpu_check on {where}, torch {torch.__version__}\n")
    print("| check | result | detail |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return failure_summary(not_passed(rows, smoke=ctx.smoke), len(rows), "checks")


def not_passed(rows, smoke):
    """Labels of the rows that make the exit status 1: every FAIL, and on a GPU every skip (a check asked for that
    did not run proved nothing); the CPU smoke mode skips what the CPU cannot run."""
    return [label if result == "FAIL" else f"{label} (skipped)" for label, result, _ in rows
            if result == "FAIL" or (result == "skip" and not smoke)]


if __name__ == "__main__":
    sys.exit(main())
