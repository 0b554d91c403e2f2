"""What every entry point does around its model (train_val.py, train_seg.py, train_video.py): seeding, cudnn mode,
autocast, compiling and wrapping the model for DDP, the frame of main(args), and turning user errors into one line
and an exit status."""
import math
import os
import random
import sys
from contextlib import nullcontext

import numpy as np
import torch

from lib.engine.amp_support import warn_emulated_bf16
from lib.engine.distributed import any_process, cleanup, init_distributed
from lib.engine.errors import PREEMPTED_STATUS, NonFiniteLoss, Preempted
from lib.engine.logger import RunLogger
from lib.engine.sync_bn import convert_sync_batchnorm
from lib.errors import ConfigError

INTERRUPTED_STATUS = 130  # 128 + SIGINT: what a shell reports for a program Ctrl-C ended
AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class LossCheck:
    """Whether a step's loss is finite, left on the device until the processes next agree (RunGuard.at_boundary
    carries it in its one reduction, before the next step or checkpoint): one host synchronisation per step instead
    of a read of the loss plus a reduction of its own. A non-finite step has updated the weights in memory, but
    the run stops before anything is checkpointed after it."""

    def __init__(self, loss, stopped):
        self.loss, self.stopped = loss.detach(), stopped  # stopped: where, and what is kept

    def flag(self):
        return (~torch.isfinite(self.loss)).to(torch.float64)

    def error(self):
        value = self.loss.item()
        where = "" if not math.isfinite(value) else " in another process"
        return NonFiniteLoss(f"training loss became non-finite{where} ({value}) {self.stopped} (try a lower --lr or "
                             f"--amp off)")

    def raise_if_any(self, ctx):
        """The agreement of its own, for where no RunGuard boundary follows (the last step of an epoch)."""
        if any_process(ctx, self.flag()):
            raise self.error()


def optimizer_step(loss, optimizer, scaler):
    """Backward and the optimizer's step on loss (scaled with a GradScaler, if any), without reading anything back."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def autocast(device, amp):
    dtype = AMP_DTYPES[amp]
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else nullcontext()


def cpu_has_native_bf16():
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX flags in /proc/cpuinfo); False if unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def warn_slow_amp(amp, device, log):
    """One warning where --amp makes a CPU run slower than fp32 (measured: fp16 6-14x, bf16 without native bf16
    ~10x on an AVX2 CPU); called once by each entry point."""
    warn_emulated_bf16(amp, device, log)  # CUDA without bf16 tensor cores (own module: lib/engine/amp_support.py)
    if device.type != "cpu" or amp == "off":
        return
    if amp == "fp16":
        log.warn("--amp fp16 on the CPU runs far slower than fp32 (6-14x measured in training steps): use --amp "
                 "off, or --amp bf16 on a CPU with native bf16 (AVX512-BF16 / AMX)")
    elif not cpu_has_native_bf16():
        log.warn("--amp bf16 on a CPU without native bf16 (no AVX512-BF16 / AMX flags) runs far slower than fp32 "
                 "(~10x measured on an AVX2 CPU): use --amp off")


def cpu_threads_note(device):
    """'  N threads' for a progress line of a CPU run (torch's intra-op threads: OMP_NUM_THREADS,
    docs/classification.md, "CPU notes"), '' on an accelerator."""
    return f"  {torch.get_num_threads()} CPU thread(s)" if device.type == "cpu" else ""


def seed_everything(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def set_determinism(deterministic):
    """--deterministic: torch.use_deterministic_algorithms(True, warn_only=True), which makes cuDNN, cuBLAS and the
    ops with a deterministic variant use it (e.g. the attention backward of nl / ns / dnl / gsnl, scatter-adds) and
    warns once for an op that has none (e.g. bilinear upsampling's backward on CUDA, in the segmentation head);
    cuBLAS also needs CUBLAS_WORKSPACE_CONFIG, read when CUDA starts, so this runs before the device is set up.
    Costs speed on a GPU (docs/classification.md, "Flags"). Otherwise cudnn.benchmark (the reference set both)."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    else:
        torch.backends.cudnn.benchmark = True


def maybe_compile(model, args, log):
    if not args.compile:
        return model
    try:
        import torch._dynamo
        torch._dynamo.config.suppress_errors = True  # a graph that fails to compile then runs eagerly, with a warning
        return torch.compile(model)
    except Exception as error:  # no compiler toolchain, unsupported platform...: training still works eagerly
        log.warn(f"--compile failed ({type(error).__name__}: {error}); running the model uncompiled")
        return model


def prepare_model(model, args, ctx, log):
    """(model_without_ddp, train_model, eval_model): the plain module for checkpoints, the (DDP-)wrapped one for
    training, and one without DDP for evaluation (DDP's forward is collective; shards differ in length)."""
    if args.sync_bn and ctx.distributed:
        model = convert_sync_batchnorm(model, ctx.device)
    elif args.sync_bn:
        log.warn("--sync-bn does nothing in a single process")
    model.to(ctx.device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    compiled = maybe_compile(model, args, log)
    train_model = compiled
    if ctx.distributed:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        train_model = torch.nn.parallel.DistributedDataParallel(compiled, device_ids=device_ids)
    return model, train_model, compiled


def run_main(args, launcher_pid, check_model, validate, train):
    """An entry point's main(args) once its flags are resolved: start the processes and the log, seed, fail on a bad
    model flag (check_model(args)) before any data is read, then validate(args, ctx, log) with --valid, else
    train(args, ctx, log); returns what that returns. Bad input, divergence and preemption reach the log too."""
    set_determinism(args.deterministic)  # before CUDA starts (cuBLAS reads its workspace setting then)
    ctx = init_distributed(args.device, launcher_pid, args.dist_timeout)
    log = RunLogger(enabled=ctx.is_main).start()
    try:
        seed_everything(args.seed + ctx.rank)
        check_model(args)
        warn_slow_amp(args.amp, ctx.device, log)
        if args.valid:
            return validate(args, ctx, log)
        return train(args, ctx, log)
    except (ConfigError, NonFiniteLoss) as error:
        log.record(f"ERROR: {error}")
        raise
    except Preempted as error:
        log.record(str(error))
        raise
    finally:
        log.close()
        cleanup(ctx)


def run_cli(main, parse_args, prog, argv=None):
    """Run main(parse_args(argv)) and return the exit status, with a one-line message on stderr instead of a
    traceback: 0 done; 2 bad input or a failed write (ConfigError: missing data, a wrong flag, a full disk...: fix
    it, then --resume auto); 3 a diverged run (NonFiniteLoss); 75 (EX_TEMPFAIL) stopped by a signal after a
    checkpoint (Preempted: run the same command with --resume auto); 130 (128 + SIGINT, the shell's) interrupted by
    Ctrl-C outside training (--valid, the start-up), on one line too."""
    try:
        main(parse_args(argv))
    except ConfigError as error:
        print(f"{prog}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except NonFiniteLoss as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 3
    except Preempted as error:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank stops, one says so
            print(f"{prog}: {error}", file=sys.stderr)
        return PREEMPTED_STATUS
    except KeyboardInterrupt:  # Ctrl-C where no RunGuard turns it into a checkpoint and a stop (--valid, start-up)
        if os.environ.get("RANK", "0") == "0":
            print(f"{prog}: interrupted (Ctrl-C)", file=sys.stderr)
        return INTERRUPTED_STATUS
    return 0
