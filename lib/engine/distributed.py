"""One process, or one of several started by torchrun: device choice, process group, reductions.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; with them train_val.py runs DistributedDataParallel (NCCL on CUDA,
gloo on CPU), without them a single plain process. Only rank 0 writes files and prints.
"""
import ctypes
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lib.errors import ConfigError

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
LAUNCHER_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class DistContext:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun(environ=None) -> bool:
    environ = os.environ if environ is None else environ
    return all(name in environ for name in TORCHRUN_VARIABLES)


def pick_device(flag: str, local_rank: int = 0, distributed: bool = False) -> torch.device:
    """auto -> cuda if available, else cpu. Under torchrun each process takes GPU LOCAL_RANK."""
    if flag == "auto":
        flag = "cuda" if torch.cuda.is_available() else "cpu"
    if flag.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {flag}: CUDA is not available here (use --device cpu)")
        if distributed:
            if ":" in flag:
                raise ConfigError("under torchrun pass --device cuda (each process uses GPU LOCAL_RANK), not cuda:N")
            if local_rank >= torch.cuda.device_count():
                raise ConfigError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) visible")
            return torch.device("cuda", local_rank)
        index = int(flag.split(":")[1]) if ":" in flag else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device {flag}: only {torch.cuda.device_count()} GPU(s) visible")
        return torch.device("cuda", index)
    if flag == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps: MPS is not available here")
    return torch.device(flag)


def die_with_launcher(poll_seconds: float = LAUNCHER_POLL_SECONDS, launcher_pid=None) -> None:
    """Make this process end when its parent (torchrun's agent, which starts each worker in a session of its own)
    ends, however it ends: otherwise a kill -9 of torchrun leaves the workers training, or waiting up to 30 min in
    init_process_group for a store that is gone.

    Two means: on Linux the kernel's parent-death signal (prctl PR_SET_PDEATHSIG, SIGKILL), and everywhere a daemon
    thread that polls the parent pid (an orphan is re-parented, so its parent pid changes). A kill leaves nothing
    half-written: checkpoint writes are atomic.

    launcher_pid: the parent pid as the entry point saw it first thing, before its imports (seconds, in which the
    launcher may die): a parent already different from it now means the launcher is gone, and this process ends.
    """
    parent = os.getppid()
    if launcher_pid is not None and parent != launcher_pid:
        print(f"the launcher (pid {launcher_pid}) ended while this process started: exiting", file=sys.stderr)
        os._exit(1)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no libc prctl: the watch below still works

    def watch():
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))  # no SIGKILL on Windows

    # (Parent pid 1 is no sign of a dead launcher: in a container the launcher itself may be pid 1. Hence the
    # comparison with the pid seen at start above.)
    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


def init_distributed(device_flag: str, launcher_pid=None) -> DistContext:
    """Join the torchrun process group if launched by torchrun, else describe the single process.

    launcher_pid: os.getppid() taken first thing in the entry point (see die_with_launcher)."""
    if not launched_by_torchrun():
        return DistContext(device=pick_device(device_flag))
    die_with_launcher(launcher_pid=launcher_pid)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    device = pick_device(device_flag, local_rank, distributed=True)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", init_method="env://")
    return DistContext(device=device, rank=rank, world_size=world_size, local_rank=local_rank, distributed=True)


def cleanup(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def _comm_device(ctx: DistContext) -> torch.device:
    # NCCL reduces CUDA tensors only; gloo takes CPU tensors.
    return ctx.device if ctx.device.type == "cuda" else torch.device("cpu")


def _all_reduce(ctx: DistContext, values, op):
    """Element-wise reduction `op` of a list of numbers over all processes, in float64 (counts stay exact). A value
    may be a one-element tensor on the run's device (e.g. a step's loss flag): it joins the reduction without a
    host read of its own, so the whole agreement costs one synchronisation."""
    if not ctx.distributed:
        return [float(v) for v in values]
    comm = _comm_device(ctx)
    host = torch.tensor([0.0 if torch.is_tensor(v) else float(v) for v in values], dtype=torch.float64)
    tensor = host.pin_memory().to(comm, non_blocking=True) if comm.type == "cuda" else host
    on_device = [i for i, v in enumerate(values) if torch.is_tensor(v)]
    if on_device:
        tensor[on_device] = torch.stack([values[i].detach().reshape(()).to(comm, torch.float64) for i in on_device])
    dist.all_reduce(tensor, op=op)
    return tensor.tolist()


def all_reduce_sums(ctx: DistContext, values):
    """Element-wise sum of a list of numbers over all processes (float64, so image counts stay exact)."""
    return _all_reduce(ctx, values, dist.ReduceOp.SUM)


def any_process(ctx: DistContext, flag) -> bool:
    """True if flag is true in any process: lets all processes stop together (a lone raise would hang the rest).
    flag: a bool, or a one-element tensor on the run's device."""
    return max_values(ctx, [flag if torch.is_tensor(flag) else (1.0 if flag else 0.0)])[0] > 0


def max_values(ctx: DistContext, values):
    """Element-wise maximum of a few small numbers over all processes: several agreements, one all_reduce."""
    return _all_reduce(ctx, values, dist.ReduceOp.MAX)


def gather_objects(ctx: DistContext, obj):
    """[obj of rank 0, obj of rank 1, ...] on every process (a one-element list in a single process)."""
    if not ctx.distributed:
        return [obj]
    gathered = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def from_main(ctx: DistContext, compute):
    """compute() in rank 0, its result in every process: one decision even where the ranks' views of the files
    differ (e.g. output folders that are not shared between nodes)."""
    if not ctx.distributed:
        return compute()
    box = [compute() if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def local_main_first(ctx: DistContext, fn):
    """Run fn in local rank 0 first (e.g. a dataset download), then in the node's other processes."""
    if ctx.local_rank != 0:
        barrier(ctx)
    result = fn()
    if ctx.local_rank == 0:
        barrier(ctx)
    return result
