"""train_video.py survives clusters and resumes honestly, as train_val.py: a kill -9 inside an epoch resumes from the
mid-epoch checkpoint (--save-every) bit for bit; SIGTERM checkpoints inside the epoch and exits 75; a resume with
settings that change the experiment is refused in one line (--allow-changed continues, recorded); a checkpoint of
another task is one line; --validation test selects nothing on the test split.

Generated .avi videos in UCF-101's layout, mc3-18 at 4 frames x 32 x 32, batch 2: 3 iterations per epoch, 2 epochs."""
import json
import os
import shutil

import pytest
import torch
import yaml
from runs import assert_same_training_state
from test_resume import event_scalars, one_thread  # noqa: F401  (one_thread: autouse fixture, one CPU thread)
from test_video_train import COMMON, LAST, RUN, records, run_runner
from videogen import write_ucf101

import train_video
from lib.engine.errors import PREEMPTED_STATUS

BATCH = ["-b", "2", "-j", "0"]


def rows(run_dir):
    return [{key: value for key, value in row.items() if key != "time"} for row in records(run_dir)]


def assert_same_run(run_dir, expected_dir):
    """Final weights and momentum bit for bit, the same metrics rows and each epoch's tensorboard points once."""
    assert_same_training_state(*(torch.load(folder / LAST, weights_only=True) for folder in (expected_dir, run_dir)))
    assert rows(run_dir) == rows(expected_dir)  # train_loss / train_top1 too: the partial sums were carried
    logged = event_scalars(run_dir)
    for tag in ("Train_Loss", "LR", "Clip_Top1"):
        assert [step for step, _ in logged[tag]] == [1, 2], tag


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run every resumed one must reproduce."""
    root = tmp_path_factory.mktemp("video_straight")
    write_ucf101(str(root / "data"), fourcc="MJPG")
    argv = COMMON + BATCH + ["--data_dir", root / "data", "--output-dir", root / "out"]
    assert train_video.cli_main([str(a) for a in argv]) == 0
    return dict(data=root / "data", run_dir=root / "out" / RUN)


def argv_of(straight, out, *more):
    return [str(a) for a in COMMON + BATCH + ["--data_dir", straight["data"], "--output-dir", out, *more]]


def test_killed_inside_an_epoch_resumes_from_its_mid_epoch_checkpoint_bit_for_bit(straight, tmp_path, capsys):
    """--save-every 2: a checkpoint after iteration 2 of epoch 1; killed -9 in its 3rd iteration; --resume auto
    continues from iteration 2 and ends as the uninterrupted run."""
    argv = argv_of(straight, tmp_path / "out", "--save-every", "2")
    killed = run_runner(tmp_path, argv, KILL_AT_BATCH="3")
    assert killed.returncode == -9, killed.stderr[-2000:]
    run_dir = tmp_path / "out" / RUN
    assert [name for name in os.listdir(run_dir) if name.endswith(".pth.tar")] == \
        ["0-ucf101-r-18-w-1snl-block.iter2.pth.tar"]
    assert train_video.cli_main(argv + ["--resume", "auto"]) == 0
    assert "0 epoch(s) and 2 iteration(s) of epoch 1 done" in capsys.readouterr().out
    assert not [name for name in os.listdir(run_dir) if ".iter" in name]  # pruned once the epoch's file exists
    assert_same_run(run_dir, straight["run_dir"])


def test_sigterm_checkpoints_inside_the_epoch_exits_75_and_the_resume_is_exact(straight, tmp_path, capsys):
    argv = argv_of(straight, tmp_path / "out")
    stopped = run_runner(tmp_path, argv, SIGNAL_AT_BATCH="5")  # epoch 2, its 2nd iteration
    assert stopped.returncode == PREEMPTED_STATUS, stopped.stderr[-2000:]
    run_dir = tmp_path / "out" / RUN
    mid = run_dir / "1-ucf101-r-18-w-1snl-block.iter2.pth.tar"
    line = f"stopped by SIGTERM at epoch 2, iteration 2; checkpoint {mid}; continue with --resume auto"
    assert stopped.stderr == f"train_video.py: {line}\n"
    assert line in (run_dir / "log_train.txt").read_text() and mid.is_file()
    assert [row["epoch"] for row in records(run_dir)] == [1]
    assert train_video.cli_main(argv + ["--resume", "auto"]) == 0
    assert "1 epoch(s) and 2 iteration(s) of epoch 2 done" in capsys.readouterr().out
    assert_same_run(run_dir, straight["run_dir"])


def test_a_resume_with_another_clip_length_is_refused_then_allowed_knowingly(straight, tmp_path, capsys):
    """--clip-len changes the experiment: refused in one line, nothing written; --allow-changed continues and
    records it. --test-clips only changes the measurement: allowed."""
    run_dir = tmp_path / "out" / RUN
    shutil.copytree(straight["run_dir"], run_dir)
    before = sorted(os.listdir(run_dir))
    argv = argv_of(straight, tmp_path / "out", "--resume", "auto", "--epochs", "3", "--test-clips", "1")
    capsys.readouterr()
    assert train_video.cli_main(argv + ["--clip-len", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--clip-len 4 -> 2" in err and "--allow-changed" in err
    assert "test-clips" not in err and sorted(os.listdir(run_dir)) == before
    assert train_video.cli_main(argv + ["--clip-len", "2", "--allow-changed"]) == 0
    with open(run_dir / "args_resume_2.yaml") as f:
        assert yaml.safe_load(f)["changed_on_resume"] == {"clip_len": {"was": 4, "now": 2}}
    assert [row["epoch"] for row in records(run_dir)] == [1, 2, 3]


def test_a_classification_checkpoint_is_refused_by_valid_in_one_line(tmp_path, capsys):
    """--valid without --dataset takes the dataset from the checkpoint, which must be a video one."""
    other = tmp_path / "classifier.pth.tar"
    torch.save({"state_dict": {}, "model_args": {"backbone": "preresnet", "arch": 20}, "epoch": 1,
                "args": {"dataset": "cifar10"}}, other)
    assert train_video.cli_main(["--valid", "--check_path", str(other)]) == 2
    err = capsys.readouterr().err
    assert err == f"train_video.py: error: {other} is a classification checkpoint, not a video one: use it with " \
                  f"train_val.py\n"


def test_validation_on_the_test_split_selects_nothing(straight, tmp_path, capsys):
    """--validation test (the 3D-ResNets convention): no model_best.pth.tar, no best accuracy, only the final."""
    argv = argv_of(straight, tmp_path / "out", "--validation", "test", "--epochs", "1")
    assert train_video.cli_main(argv) == 0
    out = capsys.readouterr().out
    run_dir = tmp_path / "out" / RUN
    assert "model_best.pth.tar" not in os.listdir(run_dir) and "Best" not in out and "best clip" not in out
    assert "--validation test: the per-epoch validation is the test split" in out
    summary, = [line for line in out.splitlines() if line.startswith("=> done:")]
    assert "final clip top-1" in summary and "no best" in summary
    checkpoint = torch.load(run_dir / "0-ucf101-r-18-w-1snl-block.pth.tar", weights_only=True)
    assert (checkpoint["best_prec1"], checkpoint["best_prec1_epoch"]) == (0.0, 0)  # "none": nothing selected
    with open(run_dir / "metrics.jsonl") as f:
        assert "video_top1" in json.loads(f.readline())


def test_valid_refuses_model_flags_that_ask_for_another_model(straight, capsys):
    """Model flags given with --valid must match the checkpoint's stored arguments (flags not given take them)."""
    argv = [str(a) for a in COMMON + ["--data_dir", straight["data"], "-j", "0", "--valid", "--check_path",
                                      straight["run_dir"] / LAST]]
    capsys.readouterr()
    assert train_video.cli_main(argv + ["--nl-type", "nl"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds another model than the flags ask for" in err and "nl_type" in err


@pytest.mark.parametrize("dataset, minutes", [("kinetics", 30), ("videofolder", 30), ("ucf101", 0), ("hmdb51", 0),
                                              ("fake", 0)])
def test_the_recipe_checkpoints_long_epochs_every_30_minutes(dataset, minutes):
    from lib.engine.video.recipe import resolve_video_args
    assert resolve_video_args(train_video.parse_video_args(["--dataset", dataset])).save_every_minutes == minutes
    given = resolve_video_args(train_video.parse_video_args(["--dataset", dataset, "--save-every-minutes", "5"]))
    assert given.save_every_minutes == 5
