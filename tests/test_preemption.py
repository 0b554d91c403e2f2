"""Runs that survive clusters: a preemption signal checkpoints inside the epoch and exits with status 75, a full
disk stops the run with one line and loses nothing, dead or hung loader workers are one line, a resume right after
a kill -9 waits for the dying holder's lock, a worker whose launcher died during its start-up ends."""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from runs import assert_same_training_state
from test_resume import ROOT, event_scalars, one_thread, write_runner  # noqa: F401  (one_thread: autouse fixture)
from torch.utils.data import DataLoader, Dataset

import train_val
from lib.engine.distributed import DistContext
from lib.engine.errors import PREEMPTED_STATUS, Preempted
from lib.engine.logger import RunLogger
from lib.engine.preemption import RunGuard, fetch_batch
from lib.engine.run_lock import RunLock
from lib.errors import ConfigError

# 256 fake images in batches of 16: 16 iterations per epoch, 2 epochs.
FAKE = ["--dataset", "fake", "--input-size", "16", "-b", "16", "-j", "0", "--epochs", "2", "--eval-freq", "1",
        "--warmup-epochs", "0", "--lr-steps", "1", "--print-freq", "1"]
FINAL = "1-fake-r-20-w-1snl-block.pth.tar"


def run_dir_of(out):
    return out / "fake" / "20" / "snl"


def records(run_dir):
    with open(run_dir / "metrics.jsonl") as f:
        return [dict(json.loads(line), time=0) for line in f]


def assert_same_run(run_dir, expected_dir):
    """Final weights and optimizer state bit for bit, the same metrics rows, each epoch's points once."""
    assert_same_training_state(*(torch.load(folder / FINAL, weights_only=True) for folder in (expected_dir, run_dir)))
    assert records(run_dir) == records(expected_dir)  # train_loss / train_top1 too: partial sums were carried
    logged = event_scalars(run_dir)
    for tag in ("Train_Loss", "LR", "Top1"):
        assert [step for step, _ in logged[tag]] == [1, 2], tag


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    assert train_val.cli_main(FAKE + ["--output-dir", str(out)]) == 0
    return run_dir_of(out)


def test_sigterm_checkpoints_inside_the_epoch_exits_75_and_the_resume_is_exact(tmp_path, straight, capsys):
    runner = write_runner(str(tmp_path))
    run_dir = run_dir_of(tmp_path)
    # A loader worker too: SLURM signals every process of the job, and a worker must outlive the signal until the
    # checkpoint is written (it would otherwise stop the run as "a data-loader worker died").
    process = subprocess.Popen([sys.executable, runner, *FAKE, "-j", "1", "--output-dir", str(tmp_path)], cwd=ROOT,
                               env=dict(os.environ, OMP_NUM_THREADS="1", SLEEP_PER_BATCH="0.2"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        log = run_dir / "log_train.txt"
        deadline = time.time() + 120
        while not (log.is_file() and "Epoch [1/2][3/16]" in log.read_text()) and time.time() < deadline:
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGTERM)  # the process and its loader worker
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == PREEMPTED_STATUS, err
    mid = [name for name in os.listdir(run_dir) if ".iter" in name]
    assert len(mid) == 1 and mid[0].startswith("0-fake-r-20-w-1snl-block.iter")
    iteration = int(mid[0].split(".iter")[1].split(".")[0])
    assert 3 <= iteration <= 6  # within a few iterations of the signal
    line = (f"stopped by SIGTERM at epoch 1, iteration {iteration}; checkpoint {run_dir / mid[0]}; continue with "
            f"--resume auto")
    assert err == f"train_val.py: {line}\n"
    assert line in log.read_text()
    assert not (run_dir / "metrics.jsonl").exists()  # no evaluation ran

    assert train_val.cli_main(FAKE + ["--output-dir", str(tmp_path), "--resume", "auto"]) == 0
    assert f"{iteration} iteration(s) of epoch 1 done" in capsys.readouterr().out
    assert not [name for name in os.listdir(run_dir) if ".iter" in name]
    assert_same_run(run_dir, straight)


def test_a_full_disk_loses_nothing_and_the_resume_completes(tmp_path, straight, capsys, monkeypatch):
    run_dir = run_dir_of(tmp_path)
    real_save, calls = torch.save, []

    def full_disk(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the checkpoint after iteration 15 (5 and 10 were written)
            f.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    argv = FAKE + ["--output-dir", str(tmp_path), "--save-every", "5"]
    assert train_val.cli_main(argv) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err
    good = run_dir / "0-fake-r-20-w-1snl-block.iter10.pth.tar"
    line = (f"cannot write {run_dir / '0-fake-r-20-w-1snl-block.iter15.pth.tar'}: No space left on device "
            f"(ENOSPC); the last good checkpoint is {good}; free space")
    assert err.count("\n") == 1 and line in err, err
    assert line in (run_dir / "log_train.txt").read_text()
    assert sorted(name for name in os.listdir(run_dir) if "pth.tar" in name) == [good.name]  # no partial, no .tmp
    assert torch.load(good, weights_only=True)["epoch_progress"][0]["iterations"] == 10

    assert train_val.cli_main(argv + ["--resume", "auto"]) == 0
    assert_same_run(run_dir, straight)


def test_a_second_signal_while_saving_changes_nothing_and_a_third_sigint_interrupts():
    ctx = DistContext(torch.device("cpu"))
    with RunGuard(ctx, RunLogger(enabled=False)) as guard:
        guard.at_boundary(1, lambda: pytest.fail("nothing to save yet"), "start")
        guard.step_done()
        saved = []

        def save():  # the cluster repeats its SIGTERM while the checkpoint is written
            os.kill(os.getpid(), signal.SIGTERM)
            saved.append("written")
            return "ckpt.pth.tar"
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(Preempted, match="stopped by SIGTERM at epoch 1, iteration 2; checkpoint ckpt.pth.tar"):
            guard.at_boundary(2, save, "epoch 1, iteration 2")
        assert saved == ["written"] and guard.received == ["SIGTERM", "SIGTERM"]
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are restored


def test_time_and_count_budgets_checkpoint_without_stopping():
    now = [0.0]
    guard = RunGuard(DistContext(torch.device("cpu")), RunLogger(enabled=False), save_every=4,
                     save_every_minutes=1, clock=lambda: now[0])
    saved = []
    for iteration in range(1, 10):
        now[0] += 25  # seconds per iteration
        guard.step_done()
        guard.at_boundary(iteration, lambda: saved.append(iteration), f"iteration {iteration}")
    assert saved == [3, 4, 7, 8]  # 60 s after the previous checkpoint, or every 4 iterations


class DyingImages(Dataset):
    """Item 3 kills the worker process that loads it (as the out-of-memory killer would) or hangs it."""

    def __init__(self, hang=False):
        self.hang = hang

    def __len__(self):
        return 8

    def __getitem__(self, index):
        if index == 3:
            if self.hang:
                time.sleep(3)
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return torch.zeros(2)


@pytest.mark.parametrize("hang", [False, True])
def test_a_killed_or_hung_loader_worker_is_one_line(hang):
    loader = DataLoader(DyingImages(hang), batch_size=2, num_workers=1, timeout=1 if hang else 0)
    batches = iter(loader)
    for _ in range(len(loader)):  # the first batch may arrive or not, before the worker's death is noticed
        batch, error = fetch_batch(batches)
        if error is not None:
            break
    assert batch is None and isinstance(error, ConfigError)
    message = str(error)
    assert "\n" not in message and "--resume auto" in message and "--workers" in message
    assert ("hung" if hang else "died") in message
    del batches


EXITING_HOLDER = """
import ctypes, os, platform, sys, threading, time
sys.path.insert(0, {root!r})
from lib.engine.run_lock import RunLock
RunLock(sys.argv[1]).acquire()
threading.Thread(target=lambda: (time.sleep(2), os._exit(0))).start()
print("held", flush=True)
time.sleep(0.5)
# The main thread ends alone (the process shows as exiting, a zombie leader) while another thread still holds
# the process's files, as after a kill -9 while its threads are torn down.
ctypes.CDLL(None).syscall({{"x86_64": 60, "aarch64": 93}}[platform.machine()], 0)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_resume_waits_for_the_lock_of_a_holder_that_is_exiting(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", EXITING_HOLDER.format(root=ROOT), str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        time.sleep(1)  # the leader has exited; the lock is still held for about a second
        started = time.time()
        with RunLock(str(tmp_path)):
            waited = time.time() - started
    finally:
        holder.kill()
        holder.wait()
    assert 0.2 < waited < 10


def test_a_live_holder_is_still_refused_at_once(tmp_path):
    with RunLock(str(tmp_path)):
        started = time.time()
        with pytest.raises(ConfigError, match="is in use by pid"):
            RunLock(str(tmp_path)).acquire()
        assert time.time() - started < 1


def test_a_worker_whose_launcher_died_during_its_start_ends():
    code = ("import sys; sys.path.insert(0, %r); from lib.engine.distributed import die_with_launcher; "
            "die_with_launcher(launcher_pid=-1); print('still running')" % ROOT)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "still running" not in result.stdout
    assert "the launcher (pid -1) ended while this process started" in result.stderr


def test_a_failed_metrics_write_is_one_line_naming_the_file_and_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    import lib.engine.logger
    def full_disk(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write would, without a file name

    monkeypatch.setattr(lib.engine.logger, "append_whole", full_disk)  # metrics.jsonl's appends
    run_dir = run_dir_of(tmp_path)
    assert train_val.cli_main(FAKE + ["--output-dir", str(tmp_path), "--save-every", "10"]) == 2
    err = capsys.readouterr().err
    line = (f"cannot write {run_dir / 'metrics.jsonl'}: No space left on device (ENOSPC); the last good checkpoint "
            f"is {run_dir / '0-fake-r-20-w-1snl-block.iter10.pth.tar'}")
    assert err.count("\n") == 1 and line in err, err
    assert line in (run_dir / "log_train.txt").read_text()


def test_an_unexpected_error_of_another_rank_is_appended_to_the_log(tmp_path):
    from lib.engine.preemption import reported_errors
    log = tmp_path / "log_train.txt"
    log.write_text("rank 0 was here\n")
    guard = RunGuard(DistContext(torch.device("cpu"), rank=1, world_size=2), RunLogger(enabled=False))
    with pytest.raises(RuntimeError):
        with reported_errors(guard, str(log)):
            raise RuntimeError("CUDA error: an illegal memory access\nwas encountered")
    with pytest.raises(ConfigError):  # agreed errors are logged by rank 0, not twice
        with reported_errors(guard, str(log)):
            raise ConfigError("cannot read image x.png")
    assert log.read_text() == ("rank 0 was here\n"
                               "ERROR: rank 1: RuntimeError: CUDA error: an illegal memory access was encountered\n")


def test_a_signal_in_the_last_iteration_checkpoints_before_the_evaluation(tmp_path, straight, capsys, monkeypatch):
    class SignalledLoss(torch.nn.CrossEntropyLoss):
        calls = 0

        def forward(self, output, target):
            SignalledLoss.calls += 1
            if SignalledLoss.calls == 16:  # the last iteration of epoch 1
                os.kill(os.getpid(), signal.SIGUSR1)
            return super().forward(output, target)

    monkeypatch.setattr(train_val, "build_criterion", lambda args: SignalledLoss())
    argv = FAKE + ["--output-dir", str(tmp_path)]
    assert train_val.cli_main(argv) == PREEMPTED_STATUS
    monkeypatch.undo()
    run_dir = run_dir_of(tmp_path)
    epoch_file = run_dir / "0-fake-r-20-w-1snl-block.pth.tar"
    assert (f"stopped by SIGUSR1 at the end of epoch 1, before its evaluation; checkpoint {epoch_file}"
            in capsys.readouterr().err)
    assert torch.load(epoch_file, weights_only=True)["pending_eval"]["lr"] == 0.1
    assert not (run_dir / "model_best.pth.tar").exists()  # written only after an evaluation
    assert train_val.cli_main(argv + ["--resume", "auto"]) == 0
    assert "evaluating epoch 1 first" in capsys.readouterr().out
    assert_same_run(run_dir, straight)
