"""Scale-out: torchrun with 2 CPU processes (gloo), SyncBatchNorm, resuming across world sizes, mixed precision,
channels-last and the torch.compile fallback."""
import argparse
import math
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from runs import records
from test_resume import one_thread, write_runner  # noqa: F401  (one_thread: autouse fixture)

import train_val
from lib.engine.distributed import DistContext, launched_by_torchrun
from lib.engine.logger import RunLogger
from lib.engine.run_lock import LOCK_NAME, RunLock
from lib.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NL_TYPES = ("snl", "nl", "a2", "ns", "dnl", "cgnl", "cc")
# Fake data without flips (--hflip 0; flips would be the same in both runs, drawn per sample, but they make the
# loss more sensitive to rounding) and dropout switched off (NO_DROPOUT): the 2-process and the 1-process runs see
# the same global batches (both shuffle one permutation drawn from (seed, epoch)) and differ only in how BatchNorm
# statistics and gradients are reduced: with --sync-bn, not at all up to float rounding.
COMMON = ["--dataset", "fake", "--input-size", "16", "--epochs", "1", "--eval-freq", "1", "--print-freq", "1",
          "--hflip", "0", "-j", "0", "--device", "cpu"]
# A large constant lr, so that a wrong gradient reduction would show in the later steps' losses.
SYNC_RUN = ["--warmup-epochs", "0", "--lr", "0.2"]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    runner = write_runner(str(folder))
    env = dict(os.environ, NO_DROPOUT="1", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             runner, *COMMON, *SYNC_RUN, "-b", "16", "--sync-bn", "--output-dir", str(folder / "out")],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = folder / "out" / "fake" / "20" / "snl"
    weights = torch.load(run_dir / "0-fake-r-20-w-1snl-block.pth.tar", weights_only=True)["state_dict"]
    return dict(folder=folder, runner=runner, stdout=result.stdout, run_dir=run_dir, weights=weights)


def torchrun(runner, argv, timeout=300, **env):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           runner, *map(str, argv)], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="1", **env))


def test_a_signal_to_one_rank_stops_both_at_one_iteration_and_the_resume_is_exact(two_process_run, tmp_path):
    """SIGUSR1 reaches rank 1 alone (as `scancel --signal` of one task would): both ranks agree to stop after the
    same iteration, rank 0 writes the checkpoint, both exit with status 75; resumed, the run ends with the weights
    of the uninterrupted run (the module's 2-process run, same flags), bit for bit."""
    argv = [*COMMON, *SYNC_RUN, "-b", "16", "--sync-bn", "--output-dir", tmp_path]
    stopped = torchrun(two_process_run["runner"], argv, NO_DROPOUT="1", SIGNAL_AT_BATCH="3", SIGNAL="SIGUSR1",
                       SIGNAL_RANK="1")
    run_dir = tmp_path / "fake" / "20" / "snl"
    mid = run_dir / "0-fake-r-20-w-1snl-block.iter3.pth.tar"
    line = f"stopped by SIGUSR1 at epoch 1, iteration 3; checkpoint {mid}; continue with --resume auto"
    assert stopped.returncode != 0 and "exitcode  : 75" in stopped.stderr, stopped.stderr[-3000:]
    assert line in (run_dir / "log_train.txt").read_text()
    assert sorted(name for name in os.listdir(run_dir) if name.endswith(".pth.tar")) == [mid.name]
    assert len(torch.load(mid, weights_only=True)["epoch_progress"]) == 2
    # Its position counts iterations of 2 processes: one process cannot continue it.
    with pytest.raises(ConfigError, match="written inside an epoch by 2 process"):
        train_val.main(train_val.parse_args(list(map(str, argv + ["--resume", "auto"]))))
    resumed = torchrun(two_process_run["runner"], argv + ["--resume", "auto"], NO_DROPOUT="1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = torch.load(run_dir / "0-fake-r-20-w-1snl-block.pth.tar", weights_only=True)["state_dict"]
    for key, value in two_process_run["weights"].items():
        assert torch.equal(value, final[key]), key
    assert [dict(row, time=0) for row in records(run_dir)] == \
        [dict(row, time=0) for row in records(two_process_run["run_dir"])[:1]]


def test_an_unreadable_image_of_rank_1_reaches_the_log_and_both_ranks_stop(tmp_path):
    from datagen import write_imagefolder

    from lib.data import EpochShuffleSampler, build_datasets
    write_imagefolder(tmp_path / "data", classes=("a", "b"), n_per_class=(8, 2), size=16)
    train_set = build_datasets("imagefolder", tmp_path / "data", 16)[0]
    sampler = EpochShuffleSampler(train_set, num_replicas=2, rank=1, seed=67)
    sampler.set_epoch(0)
    bad = train_set.samples[next(iter(sampler))[0]][0]  # the first image of rank 1's shard
    with open(bad, "wb"):
        pass
    started = time.time()
    result = torchrun(write_runner(str(tmp_path)), ["--dataset", "imagefolder", "--data_dir", tmp_path / "data",
                                                   "--input-size", "16", "--backbone", "preresnet", "--arch", "20",
                                                   "--epochs", "1", "-b", "4", "-j", "0", "--output-dir",
                                                   tmp_path / "out"], timeout=120)
    assert result.returncode != 0 and time.time() - started < 100
    log = (tmp_path / "out" / "imagefolder" / "20" / "snl" / "log_train.txt").read_text()
    assert f"ERROR: rank 1: cannot read image {bad}" in log, result.stderr[-3000:]


def test_rank0_alone_writes_one_set_of_outputs(two_process_run):
    run_dir = two_process_run["run_dir"]
    names = sorted(os.listdir(run_dir))
    assert [name for name in names if name.endswith(".pth.tar")] == ["0-fake-r-20-w-1snl-block.pth.tar",
                                                                      "model_best.pth.tar"]
    assert len([name for name in names if name.startswith("events.out.tfevents")]) == 1
    assert names.count("log_train.txt") == 1 and names.count("metrics.jsonl") == 1
    rows = records(run_dir)
    assert len(rows) == 1 and rows[0]["n"] == 128  # every validation image exactly once over the 2 shards
    log = (run_dir / "log_train.txt").read_text()
    assert log.count("Epoch [1/1][1/8]") == 1  # 256 images / (16 x 2) = 8 steps, printed by rank 0 only
    assert two_process_run["stdout"].count("Epoch [1/1][1/8]") == 1
    assert "batch size 16 per process x 2 process(es) = global batch 32" in log
    checkpoint = torch.load(run_dir / "model_best.pth.tar", weights_only=True)
    assert not [key for key in checkpoint["state_dict"] if key.startswith("module.")]
    assert checkpoint["world_size"] == 2 and len(checkpoint["rng_states"]) == 2


def test_sync_bn_two_processes_match_one_process_with_the_same_global_batch(two_process_run, tmp_path, capsys,
                                                                              monkeypatch):
    real_build_model = train_val.build_model

    def without_dropout(*args, **kwargs):
        model = real_build_model(*args, **kwargs)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        return model
    monkeypatch.setattr(train_val, "build_model", without_dropout)
    assert train_val.cli_main(COMMON + SYNC_RUN + ["-b", "32", "--output-dir", str(tmp_path)]) == 0
    single, = records(tmp_path / "fake" / "20" / "snl")
    double, = records(two_process_run["run_dir"])
    # Same initial weights (seed 67 on rank 0, broadcast by DDP), same batches, global BN statistics:
    # only the order of float reductions differs.
    assert double["train_loss"] == pytest.approx(single["train_loss"], rel=1e-4)
    assert double["loss"] == pytest.approx(single["loss"], rel=1e-3)
    assert double["top1"] == pytest.approx(single["top1"], abs=100 / 128 + 1e-9)  # at most one image flips


def test_two_process_checkpoint_resumes_in_one_process(two_process_run, capsys):
    out = two_process_run["folder"] / "out"
    assert train_val.cli_main(COMMON + SYNC_RUN + ["--epochs", "2", "-b", "32", "--output-dir", str(out),
                                                   "--resume", "auto"]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out
    assert out.count("trained by 2 process(es), this run has 1: training continues, but not as the same run") == 1
    assert [row["epoch"] for row in records(two_process_run["run_dir"])] == [1, 2]


def test_torchrun_is_detected_from_its_environment():
    assert launched_by_torchrun({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    assert not launched_by_torchrun({"RANK": "0"})


@pytest.mark.parametrize("nl_type", NL_TYPES)
def test_bf16_autocast_training_stays_finite(nl_type):
    """A few bf16 steps of the real train_one_epoch (bf16 is emulated on most CPUs: slow, so 3 small batches)."""
    torch.manual_seed(0)
    model = train_val.build_model("preresnet", 20, 10, nl_type=nl_type)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    batches = [(torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))) for _ in range(3)]
    args = argparse.Namespace(amp="bf16", channels_last=False, print_freq=100, epochs=1)
    stats = train_val.train_one_epoch(model, torch.nn.CrossEntropyLoss(), optimizer, None, batches,
                                      DistContext(torch.device("cpu")), 0, 0.1, args, RunLogger(enabled=False))
    assert stats["n"] == 48 and math.isfinite(stats["loss"])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))  # it did train


def test_bf16_flag_and_fp16_with_its_grad_scaler_and_channels_last(tmp_path, capsys):
    small = ["--input-size", "8", "-b", "128"]  # 2 steps: autocast on the CPU is slow
    assert train_val.cli_main(COMMON + small + ["--amp", "bf16", "--output-dir", str(tmp_path / "bf16")]) == 0
    assert "--amp fp16 on the CPU" not in capsys.readouterr().out
    row, = records(tmp_path / "bf16" / "fake" / "20" / "snl")
    assert math.isfinite(row["train_loss"]) and math.isfinite(row["loss"])
    assert train_val.cli_main(COMMON + small + ["--amp", "fp16", "--channels-last",
                                                "--output-dir", str(tmp_path / "fp16")]) == 0
    assert capsys.readouterr().out.count("WARNING: --amp fp16 on the CPU runs far slower than fp32") == 1
    run_dir = tmp_path / "fp16" / "fake" / "20" / "snl"
    row, = records(run_dir)
    assert math.isfinite(row["train_loss"]) and math.isfinite(row["loss"])
    checkpoint = torch.load(run_dir / "model_best.pth.tar", weights_only=True)
    assert checkpoint["scaler"] and checkpoint["scaler"]["scale"] > 0  # the fp16 loss scale survives a resume
    assert checkpoint["args"]["channels_last"] is True


def test_compile_failure_falls_back_to_eager(tmp_path, capsys, monkeypatch):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no compiler toolchain")
    monkeypatch.setattr(torch, "compile", broken_compile)
    assert train_val.cli_main(COMMON + ["-b", "128", "--compile", "--output-dir", str(tmp_path)]) == 0
    assert "--compile failed (RuntimeError: no compiler toolchain)" in capsys.readouterr().out


# --- one run per folder; workers die with their launcher ----------------------------------------------------------

def test_a_held_run_folder_refuses_a_second_run(tmp_path, capsys):
    run_dir = tmp_path / "fake" / "20" / "snl"
    with RunLock(str(run_dir)):  # another open file: flock refuses it even within this process
        status = train_val.cli_main(COMMON + ["-b", "128", "--output-dir", str(tmp_path), "--resume", "auto"])
        err = capsys.readouterr().err
        assert status == 2 and err.count("\n") == 1
        assert f"run folder {run_dir} is in use by pid {os.getpid()} on host {socket.gethostname()}" in err
        assert os.listdir(run_dir) == [LOCK_NAME]  # the refused run wrote nothing
    assert not (tmp_path / "fake").exists()  # the folders the lock created are gone with it


def test_a_stale_lock_of_a_dead_process_does_not_block(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(f"pid={dead.pid}\nhost={socket.gethostname()}\nsince=long ago\n")
    with RunLock(str(tmp_path)):
        assert f"pid={os.getpid()}" in (tmp_path / LOCK_NAME).read_text()
    assert not (tmp_path / LOCK_NAME).exists()


def alive(pid):
    """True while pid runs (a zombie, dead but not yet reaped by its new parent, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(condition, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


LAUNCHER = """
import os, subprocess, sys, time
child = subprocess.Popen(sys.argv[1:], start_new_session=True)  # as torchrun starts its workers
print(child.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_worker_waiting_in_init_process_group_dies_with_its_launcher(tmp_path):
    """Rank 1 of 2 whose rank 0 never comes: it waits in init_process_group (up to 30 min before); killing the
    process that started it must end it at once."""
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    runner = write_runner(str(tmp_path))
    mark = tmp_path / "in_init"
    env = dict(os.environ, RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               MARK_INIT=str(mark), OMP_NUM_THREADS="1")
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, sys.executable, runner, *COMMON,
                                 "--output-dir", str(tmp_path / "out")], env=env, stdout=subprocess.PIPE, text=True)
    try:
        worker = int(launcher.stdout.readline())
        assert wait_for(mark.exists, 120), "the worker never reached init_process_group"
        time.sleep(1)
        assert alive(worker)
    finally:
        launcher.kill()
        launcher.wait()
    died = wait_for(lambda: not alive(worker), 10)
    if not died:
        os.kill(worker, signal.SIGKILL)  # leave no stray process behind a failed test
    assert died, "the worker outlived its launcher"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_torchrun_workers_die_with_a_killed_launcher(tmp_path):
    """kill -9 of torchrun's process group while its 2 workers train: the workers (in sessions of their own) end
    too, so a resume never finds two runs writing one folder."""
    runner = write_runner(str(tmp_path))
    pids = tmp_path / "pids"
    pids.mkdir()
    out = tmp_path / "out"
    env = dict(os.environ, PID_DIR=str(pids), OMP_NUM_THREADS="1")
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                 "2", runner, *COMMON, "--epochs", "100", "-b", "16", "--output-dir", str(out)],
                                env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        # Training has started once rank 0 holds the run folder and has written its first checkpoint.
        run_dir = out / "fake" / "20" / "snl"
        assert wait_for(lambda: run_dir.is_dir() and any(name.endswith(".pth.tar") for name in os.listdir(run_dir)),
                        180), "training never started"
        workers = [int(name) for name in os.listdir(pids)]
        assert len(workers) == 2 and all(alive(pid) for pid in workers)
    finally:
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()
    died = wait_for(lambda: not any(alive(pid) for pid in workers), 10)
    for pid in filter(alive, workers):
        os.kill(pid, signal.SIGKILL)  # leave no stray process behind a failed test
    assert died, "workers outlived torchrun"
    # The dead run's lock does not block the next one. (A killed process shows as a zombie while its last threads
    # are still exiting, with its files open: the kernel drops the lock a moment later.)
    assert wait_for(lambda: can_lock(run_dir), 10), "the killed run's lock still blocks"


def can_lock(run_dir):
    try:
        with RunLock(str(run_dir)):
            return True
    except ConfigError:
        return False


def test_a_forked_child_does_not_keep_the_run_folder_locked(tmp_path):
    # DataLoader workers are forked: their copy of the lock's descriptor must not outlive the run that holds it.
    lock = RunLock(str(tmp_path / "run")).acquire()
    ready_read, ready_write = os.pipe()
    stop_read, stop_write = os.pipe()
    child = os.fork()
    if child == 0:  # the child stays alive, as a worker would, until the test is done
        os.write(ready_write, b"x")  # the fork hooks have run by now
        os.read(stop_read, 1)
        os._exit(0)
    try:
        os.read(ready_read, 1)
        os.close(lock.handle)  # the holder dies (kill -9): its lock file stays, its descriptor is gone
        with RunLock(str(tmp_path / "run")):  # free although the child still runs
            pass
    finally:
        os.write(stop_write, b"x")
        os.waitpid(child, 0)
        for fd in (ready_read, ready_write, stop_read, stop_write):
            os.close(fd)
