"""One process, or one of several started by torchrun or by srun: device choice, process group, reductions.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; with them train_val.py runs DistributedDataParallel (NCCL on CUDA,
gloo on CPU). `srun python train_val.py ...` (one SLURM task per process, no torchrun) is read from SLURM's own
variables instead, so that SLURM's signals reach every training process directly. Without either, a single plain
process. Only rank 0 writes files and prints.
"""
import ctypes
import datetime
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lib.errors import ConfigError

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# torch's own default is 10 min for NCCL: shorter than local rank 0's scan of an ImageNet or Kinetics tree while the
# other ranks wait in a barrier, after which NCCL's watchdog would abort a healthy start.
DEFAULT_DIST_TIMEOUT_MINUTES = 60
SLURM_PORT_BASE, SLURM_PORT_SPAN = 10000, 20000  # MASTER_PORT from the job id: jobs sharing a node rarely collide
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


def slurm_task_count(environ=None) -> int:
    """Tasks of this SLURM job step (srun sets SLURM_STEP_NUM_TASKS; SLURM_NTASKS is the job's), 0 outside SLURM."""
    environ = os.environ if environ is None else environ
    if "SLURM_PROCID" not in environ:
        return 0
    return int(environ.get("SLURM_STEP_NUM_TASKS") or environ.get("SLURM_NTASKS") or 0)


def launched_by_srun(environ=None) -> bool:
    """One of several SLURM tasks started by srun without torchrun (torchrun's variables win: under
    `srun torchrun` each task is a launcher, not a training process)."""
    environ = os.environ if environ is None else environ
    return not launched_by_torchrun(environ) and slurm_task_count(environ) > 1


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list in its compressed form: 'node[01-04,07]' -> 'node01',
    'a1,b2' -> 'a1', 'rack[2-3]-gpu[5,9]' -> 'rack2-gpu5' (scontrol is not needed, nor always installed)."""
    depth, end = 0, len(nodelist)
    for i, char in enumerate(nodelist):  # the first comma outside brackets ends the first host group
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            end = i
            break
    first = re.sub(r"\[([^\]]*)\]", lambda m: m.group(1).split(",")[0].split("-")[0], nodelist[:end].strip())
    if not first or "[" in first or "]" in first:
        raise ConfigError(f"cannot read the first host of SLURM's node list {nodelist!r}")
    return first


def slurm_process_variables(environ=None) -> dict:
    """The variables torch's env:// rendezvous reads, from SLURM's: RANK / WORLD_SIZE / LOCAL_RANK from the task's
    SLURM_PROCID / task count / SLURM_LOCALID; MASTER_ADDR the first host of the step's (else the job's) node list,
    where task 0 runs; MASTER_PORT from the job id. A MASTER_ADDR or MASTER_PORT already set is kept."""
    environ = os.environ if environ is None else environ
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST") or ""
    job_id = int(environ.get("SLURM_JOB_ID") or 0)
    return {"RANK": environ["SLURM_PROCID"], "WORLD_SIZE": str(slurm_task_count(environ)),
            "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
            "MASTER_ADDR": environ.get("MASTER_ADDR") or first_slurm_host(nodelist),
            "MASTER_PORT": environ.get("MASTER_PORT") or str(SLURM_PORT_BASE + job_id % SLURM_PORT_SPAN)}


def slurm_gpu_index(local_rank: int) -> int:
    """GPU of a SLURM task: SLURM_LOCALID among the node's GPUs, or the task's only GPU where SLURM binds one GPU
    per task (--gpus-per-task=1: every task sees its own GPU as cuda:0)."""
    if torch.cuda.is_available() and torch.cuda.device_count() == 1:
        return 0
    return local_rank


def init_distributed(device_flag: str, launcher_pid=None, timeout_minutes=DEFAULT_DIST_TIMEOUT_MINUTES) -> DistContext:
    """Join the process group if launched by torchrun or srun, else describe the single process.

    launcher_pid: os.getppid() taken first thing in the entry point (see die_with_launcher); timeout_minutes: how
    long a collective (the first barrier too) may wait for the slowest process (--dist-timeout)."""
    srun = launched_by_srun()
    if srun:
        # Exported, so that everything reading torchrun's variables (env://, run_cli's rank-0 message) agrees.
        os.environ.update(slurm_process_variables())
    elif not launched_by_torchrun():
        device = pick_device(device_flag)
        if device.type == "cuda":
            torch.cuda.set_device(device)  # else pin_memory's thread and some kernels start a context on GPU 0
        return DistContext(device=device)
    else:
        die_with_launcher(launcher_pid=launcher_pid)  # srun's step daemon ends its own tasks: not needed there
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    device = pick_device(device_flag, slurm_gpu_index(local_rank) if srun else local_rank, distributed=True)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        join_process_group(device, timeout_minutes)
    return DistContext(device=device, rank=rank, world_size=world_size, local_rank=local_rank, distributed=True)


def join_process_group(device: torch.device, timeout_minutes) -> None:
    """init_process_group with an explicit timeout; on CUDA with device_id, which binds NCCL's communicator to this
    process's GPU at once (no guess of the device at the first collective, no context on GPU 0)."""
    if not timeout_minutes or timeout_minutes <= 0:
        raise ConfigError(f"--dist-timeout must be a positive number of minutes, got {timeout_minutes}")
    options = dict(timeout=datetime.timedelta(minutes=timeout_minutes))
    if device.type == "cuda":
        options["device_id"] = device
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", init_method="env://", **options)


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
