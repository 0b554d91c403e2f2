"""Resuming: a run killed at any point (kill -9 mid-epoch, mid-checkpoint-write) and resumed ends with exactly the
weights of an uninterrupted run; the lr is a function of the epoch; the best accuracies survive a resume."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from datagen import write_cifar
from runs import assert_same_training_state, records
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train_val
from lib.engine.classification.recipe import RECIPES
from lib.engine.schedule import WarmupStepSchedule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a small shared CPU, several threads that wait on each other are far slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

# train_val.py with test-only faults injected from outside (nothing of this lives in the training code):
# KILL_AT_BATCH=k SIGKILLs the process as its k-th training batch starts; SIGNAL_AT_BATCH=k sends it SIGNAL
# (default SIGTERM) there instead, in the process of rank SIGNAL_RANK only (default 0); SLEEP_PER_BATCH=s slows
# every training step by s seconds; KILL_BEFORE_RENAME=name SIGKILLs it
# when a fully written temporary file is about to be renamed to `name`; NO_DROPOUT=1 sets every dropout to p=0;
# MARK_INIT and PID_DIR leave marks for the tests that kill a launcher (see below).
RUNNER = """
import os, signal, sys
sys.path.insert(0, {root!r})
import torch
import train_val

def die():
    os.kill(os.getpid(), signal.SIGKILL)

kill_at_batch = int(os.environ.get("KILL_AT_BATCH", "0"))
signal_at_batch = int(os.environ.get("SIGNAL_AT_BATCH", "0"))
if os.environ.get("RANK", "0") != os.environ.get("SIGNAL_RANK", "0"):
    signal_at_batch = 0
if kill_at_batch or signal_at_batch:
    class DyingLoss(torch.nn.CrossEntropyLoss):
        calls = 0
        def forward(self, output, target):
            DyingLoss.calls += 1
            if DyingLoss.calls == kill_at_batch:
                die()
            if DyingLoss.calls == signal_at_batch:
                os.kill(os.getpid(), getattr(signal, os.environ.get("SIGNAL", "SIGTERM")))
            return super().forward(output, target)
    train_val.build_criterion = lambda args: DyingLoss()

sleep_per_batch = float(os.environ.get("SLEEP_PER_BATCH", "0"))
if sleep_per_batch:  # slow training steps, for a signal sent from outside at a known point
    import time
    class SlowLoss(torch.nn.CrossEntropyLoss):
        def forward(self, output, target):
            time.sleep(sleep_per_batch)
            return super().forward(output, target)
    train_val.build_criterion = lambda args: SlowLoss()

kill_before_rename = os.environ.get("KILL_BEFORE_RENAME")
if kill_before_rename:
    real_replace = os.replace
    def replace(source, target, *args, **kwargs):
        if os.path.basename(target) == kill_before_rename:
            die()
        return real_replace(source, target, *args, **kwargs)
    os.replace = replace

if os.environ.get("NO_DROPOUT") == "1":
    real_build_model = train_val.build_model
    def build_model(*args, **kwargs):
        model = real_build_model(*args, **kwargs)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        return model
    train_val.build_model = build_model

mark_init = os.environ.get("MARK_INIT")
if mark_init:  # MARK_INIT=path: create that file when entering init_process_group
    import torch.distributed as dist
    real_init = dist.init_process_group
    def init_process_group(*args, **kwargs):
        open(mark_init, "w").close()
        return real_init(*args, **kwargs)
    dist.init_process_group = init_process_group

pid_dir = os.environ.get("PID_DIR")
if pid_dir:  # PID_DIR=folder: leave a file named by this process's pid there
    open(os.path.join(pid_dir, str(os.getpid())), "w").close()

sys.exit(train_val.cli_main(sys.argv[1:]))
"""


def write_runner(folder):
    path = os.path.join(folder, "runner.py")
    with open(path, "w") as f:
        f.write(RUNNER.format(root=ROOT))
    return path


def run_runner(runner, argv, **env):
    return subprocess.run([sys.executable, runner, *map(str, argv)], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1", **env), cwd=ROOT)


def final_checkpoint(run_dir, name):
    return torch.load(os.path.join(run_dir, name), weights_only=True)


def test_killed_and_resumed_run_ends_with_the_same_weights(tmp_path):
    write_cifar(tmp_path / "data", "cifar10", n_train=48, n_test=16)  # random crops and flips: the RNG matters
    runner = write_runner(tmp_path)
    # 3 batches per epoch; warm-up epoch at lr 0.01, then 0.1, then a decay to 0.01 for the last epoch.
    common = ["--dataset", "cifar10", "--data_dir", tmp_path / "data", "--epochs", "3", "-b", "16", "--eval-freq", "1",
              "--warmup-epochs", "1", "--lr-steps", "2", "--print-freq", "2"]
    straight = run_runner(runner, common + ["-j", "0", "--output-dir", tmp_path / "straight"])
    assert straight.returncode == 0, straight.stderr

    out = tmp_path / "killed"
    run_dir = out / "cifar10" / "20" / "snl"
    # The data order and augmentation are functions of (seed, epoch, index): the worker count does not matter.
    # --save-every 2: checkpoints after iterations 2, 4 and 8 of the run too (3 and 6 end epochs).
    killed_args = common + ["-j", "2", "--output-dir", out, "--save-every", "2"]
    first = run_runner(runner, killed_args, KILL_AT_BATCH="4")  # epoch 2, batch 1: resumed from an epoch's end
    assert first.returncode == -9
    names = os.listdir(run_dir)
    assert names.count("0-cifar10-r-20-w-1snl-block.pth.tar") == 1 and not [n for n in names if ".iter" in n]
    assert "1-cifar10-r-20-w-1snl-block.pth.tar" not in names
    # Killed in epoch 2, batch 3: resumed inside the epoch, after its first iteration.
    second = run_runner(runner, killed_args + ["--resume", "auto"], KILL_AT_BATCH="3")
    assert second.returncode == -9
    assert "1-cifar10-r-20-w-1snl-block.iter1.pth.tar" in os.listdir(run_dir)
    # Resumed inside epoch 2, then killed while writing the epoch-3 checkpoint (its temporary file is complete),
    # after the checkpoint of epoch 3, iteration 2.
    third = run_runner(runner, killed_args + ["--resume", "auto"],
                       KILL_BEFORE_RENAME="2-cifar10-r-20-w-1snl-block.pth.tar")
    assert third.returncode == -9
    assert "resuming" in third.stdout and "1 iteration(s) of epoch 2 done" in third.stdout
    names = os.listdir(run_dir)
    assert [name for name in names if name.endswith(".tmp")] and "2-cifar10-r-20-w-1snl-block.iter2.pth.tar" in names
    assert "1-cifar10-r-20-w-1snl-block.iter1.pth.tar" not in names  # pruned once the newer one was complete
    last = run_runner(runner, killed_args + ["--resume", "auto"])
    assert last.returncode == 0, last.stderr
    assert not [name for name in os.listdir(run_dir) if ".iter" in name]  # the epoch's file replaced it
    assert "left by an interrupted checkpoint write" in last.stdout
    assert not [name for name in os.listdir(run_dir) if name.endswith(".tmp")]

    name = "2-cifar10-r-20-w-1snl-block.pth.tar"
    expected = final_checkpoint(tmp_path / "straight" / "cifar10" / "20" / "snl", name)
    resumed = final_checkpoint(run_dir, name)
    assert expected["state_dict"].keys() == resumed["state_dict"].keys()
    assert_same_training_state(expected, resumed)
    assert records(run_dir) == [dict(row, time=resumed_row["time"]) for row, resumed_row in
                                zip(records(tmp_path / "straight" / "cifar10" / "20" / "snl"), records(run_dir))]
    # Events logged by the killed runs after their last checkpoint are purged, and none before it is lost: every
    # tag holds each epoch once, with the values of metrics.jsonl (as an uninterrupted run's).
    logged, rows = event_scalars(run_dir), records(run_dir)
    for tag, key in {"Train_Loss": "train_loss", "LR": "lr", "Top1": "top1", "Top5": "top5",
                     "Test_Loss": "loss"}.items():
        assert [step for step, _ in logged[tag]] == [1, 2, 3], tag
        assert [value for _, value in logged[tag]] == pytest.approx([row[key] for row in rows], rel=1e-6), tag
    assert [row["lr"] for row in records(run_dir)] == [0.010000000000000002, 0.1, 0.010000000000000002]


def reference_lrs(lr, drops, epochs, warmup_epochs=10, drop_ratio=0.1):
    """The reference's adjust_learning_rate over a whole run: warm-up from a linspace, then a global lr that each
    drop epoch multiplies in place (correct only when never interrupted)."""
    warmup = np.linspace(lr * drop_ratio ** len(drops), lr, num=warmup_epochs)
    drops = [d + warmup_epochs for d in drops]
    lrs, current = [], lr
    for epoch in range(epochs + warmup_epochs):
        if epoch < warmup_epochs:
            lrs.append(warmup[epoch])
        else:
            current *= drop_ratio if epoch in drops else 1.0
            lrs.append(current)
    return lrs


def test_schedule_matches_the_reference_for_both_recipes():
    for recipe in RECIPES.values():
        schedule = WarmupStepSchedule(recipe["lr"], [s + 10 for s in recipe["lr_steps"]], 10)
        expected = reference_lrs(recipe["lr"], recipe["lr_steps"], recipe["epochs"])
        assert np.allclose([schedule.lr_at(e) for e in range(len(expected))], expected, rtol=1e-12, atol=0)
    cifar = WarmupStepSchedule(0.1, [160, 260], 10)
    assert np.isclose(cifar.lr_at(0), 0.1 * 0.01) and cifar.lr_at(9) == 0.1 and cifar.lr_at(159) == 0.1
    assert np.isclose(cifar.lr_at(160), 0.01) and np.isclose(cifar.lr_at(309), 0.001)
    assert np.isclose(WarmupStepSchedule(0.01, [41, 71, 91], 10).lr_at(0), 0.01 * 0.001)


def test_resume_after_a_decay_and_best_accuracies_survive(tmp_path, capsys):
    common = ["--dataset", "fake", "--input-size", "16", "-b", "64", "-j", "0", "--eval-freq", "1",
              "--warmup-epochs", "0", "--lr-steps", "1", "--lr", "0.1", "--output-dir", str(tmp_path)]
    run_dir = tmp_path / "fake" / "20" / "snl"
    assert train_val.cli_main(common + ["--epochs", "2", "--resume", "auto"]) == 0
    out = capsys.readouterr().out
    assert "no checkpoint in" in out  # --resume auto in an empty folder starts from scratch
    summary_after_two = [line for line in out.splitlines() if line.startswith("=> done:")]

    # Nothing left to train: the summary comes from the checkpoint alone, so the bests must have been restored.
    assert train_val.cli_main(common + ["--epochs", "2", "--resume", "auto"]) == 0
    out = capsys.readouterr().out
    assert "nothing left to train" in out
    assert [line for line in out.splitlines() if line.startswith("=> done:")] == summary_after_two

    # The reference's spelling, continuing past the decay at epoch 1: epoch 3 trains at 0.01, not at 0.1.
    assert train_val.cli_main(common + ["--epochs", "3", "--isresume", "True", "--resumename",
                                        "1-fake-r-20-w-1snl-block.pth.tar"]) == 0
    rows = records(run_dir)
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert np.allclose([row["lr"] for row in rows], [0.1, 0.01, 0.01])
    checkpoint = final_checkpoint(run_dir, "2-fake-r-20-w-1snl-block.pth.tar")
    best1 = max(rows, key=lambda row: row["top1"])
    best5 = max(rows, key=lambda row: row["top5"])
    assert (checkpoint["best_prec1"], checkpoint["best_prec1_epoch"]) == (best1["top1"], best1["epoch"])
    assert (checkpoint["best_prec5"], checkpoint["best_prec5_epoch"]) == (best5["top5"], best5["epoch"])
    assert checkpoint["lr"] == rows[-1]["lr"]
    assert (run_dir / "args_resume_2.yaml").is_file() and (run_dir / "args.yaml").is_file()


FAKE = ["--dataset", "fake", "--input-size", "16", "-b", "64", "-j", "0", "--eval-freq", "1", "--warmup-epochs", "0",
        "--lr-steps", "9", "--print-freq", "100"]


def file_state(run_dir):
    return {name: (run_dir / name).read_bytes() for name in os.listdir(run_dir)
            if name.endswith(".pth.tar") or name == "metrics.jsonl"}


def test_resume_auto_with_only_model_best_continues_it_and_never_starts_over(tmp_path, capsys):
    """The issue's recipe: 2 epochs, per-epoch checkpoints deleted, --resume auto --epochs 1. Before, the run
    started from scratch and overwrote model_best.pth.tar and metrics.jsonl."""
    common = FAKE + ["--output-dir", str(tmp_path)]
    run_dir = tmp_path / "fake" / "20" / "snl"
    assert train_val.cli_main(common + ["--epochs", "2"]) == 0
    for name in os.listdir(run_dir):
        if name.endswith("-block.pth.tar"):
            os.remove(run_dir / name)
    best_epoch = torch.load(run_dir / "model_best.pth.tar", weights_only=True)["epoch"]
    before = file_state(run_dir)
    capsys.readouterr()
    assert train_val.cli_main(common + ["--epochs", "1", "--resume", "auto"]) == 0
    out = capsys.readouterr().out
    assert "continuing from model_best.pth.tar" in out and "nothing left to train" in out
    after = file_state(run_dir)
    assert after["model_best.pth.tar"] == before["model_best.pth.tar"]
    assert after["metrics.jsonl"] == before["metrics.jsonl"]  # every row kept
    # The best file is the checkpoint of its epoch again, under that epoch's name.
    assert after[f"{best_epoch - 1}-fake-r-20-w-1snl-block.pth.tar"] == before["model_best.pth.tar"]

    # Continuing for real trains on from the best's epoch.
    assert train_val.cli_main(common + ["--epochs", "3", "--resume", "auto"]) == 0
    assert [row["epoch"] for row in records(run_dir)] == list(range(1, 4))

    # Nothing readable left: a one-line error, and nothing is touched.
    for name in os.listdir(run_dir):
        if name.endswith(".pth.tar"):
            (run_dir / name).write_bytes(b"not a checkpoint")
    before = file_state(run_dir)
    capsys.readouterr()
    assert train_val.cli_main(common + ["--epochs", "4", "--resume", "auto"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no readable checkpoint" in err
    assert file_state(run_dir) == before


def test_nothing_left_to_train_still_prunes_checkpoints(tmp_path):
    common = FAKE + ["--output-dir", str(tmp_path), "--epochs", "2"]
    run_dir = tmp_path / "fake" / "20" / "snl"
    assert train_val.cli_main(common + ["--keep-checkpoints", "0"]) == 0
    assert sorted(name for name in os.listdir(run_dir) if name.endswith("-block.pth.tar")) == \
        ["0-fake-r-20-w-1snl-block.pth.tar", "1-fake-r-20-w-1snl-block.pth.tar"]
    assert train_val.cli_main(common + ["--keep-checkpoints", "1", "--resume", "auto"]) == 0
    assert sorted(name for name in os.listdir(run_dir) if name.endswith("-block.pth.tar")) == \
        ["1-fake-r-20-w-1snl-block.pth.tar"]


def event_scalars(run_dir):
    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def test_flushed_points_are_on_disk_and_a_resume_within_one_second_keeps_them(tmp_path, monkeypatch):
    """Two causes of lost points: tensorboardX's flush() did not wait for its writer thread (points flushed before
    a kill -9 could be missing), and it names an event file by the second it was opened, opening it with "wb" (a
    resume within the same second as the killed run's start overwrote that run's file). Here the clock is frozen,
    so both writers open in "the same second", and the first one is never closed, as in a kill."""
    import tensorboardX.event_file_writer

    from lib.engine.logger import open_tensorboard
    frozen = __import__("time").time()
    monkeypatch.setattr(tensorboardX.event_file_writer.time, "time", lambda: frozen)
    killed = open_tensorboard(str(tmp_path), 0)
    for step in range(1, 4):
        killed.add_scalar("LR", 0.1 * step, step)
        killed.add_scalar("Train Loss", 1.0 / step, step)
    killed.flush()  # epoch 2 then "killed" before its checkpoint
    assert [step for step, _ in event_scalars(tmp_path)["LR"]] == [1, 2, 3]
    resumed = open_tensorboard(str(tmp_path), 1)  # resumed from the checkpoint of epoch 1
    resumed.add_scalar("LR", 0.5, 2)
    resumed.close()
    assert len(os.listdir(tmp_path)) == 2
    logged = event_scalars(tmp_path)
    assert [(step, round(value, 6)) for step, value in logged["LR"]] == [(1, 0.1), (2, 0.5)]
    assert [step for step, _ in logged["Train_Loss"]] == [1]


def test_latest_checkpoint_is_the_newest_complete_one_model_best_included(tmp_path):
    from lib.engine.checkpoint import latest_checkpoint

    def save(name, epoch):
        torch.save({"epoch": epoch, "state_dict": {}}, tmp_path / name)
        return str(tmp_path / name)
    assert latest_checkpoint(str(tmp_path)) is None
    best = save("model_best.pth.tar", 3)
    assert latest_checkpoint(str(tmp_path)) == best  # nothing else left
    save("1-fake-r-20-w-1snl-block.pth.tar", 2)
    assert latest_checkpoint(str(tmp_path)) == best  # the best is newer
    third = save("2-fake-r-20-w-1snl-block.pth.tar", 3)
    assert latest_checkpoint(str(tmp_path)) == third  # same epoch: the per-epoch file
    fourth = save("3-fake-r-20-w-1snl-block.pth.tar", 4)
    assert latest_checkpoint(str(tmp_path)) == fourth
    (tmp_path / "3-fake-r-20-w-1snl-block.pth.tar").write_bytes(b"truncated")
    assert latest_checkpoint(str(tmp_path)) == third  # an unreadable file is skipped
