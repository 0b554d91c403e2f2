"""train_video.py end to end on generated .avi videos in UCF-101's layout: training, clip validation and the
multi-clip video test, every output, --valid, an exact resume after kill -9, and 2 gloo processes under torchrun.

The network is torchvision's mc3-18 (11.7M parameters, the smallest video backbone: its checkpoints are a third of
r3d-18's) at 4 frames x 32 x 32; 21 videos of 3 classes in 7 groups (split 1: groups 1-2 test, 3-7 train, of which
--validation holdout validates on 5-7: 6 train, 9 validation, 6 test videos)."""
import contextlib
import io
import os
import re
import shlex
import subprocess
import sys

import pytest
import torch
from runs import records, run_script
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_resume import one_thread  # noqa: F401  (autouse fixture: one CPU thread)
from videogen import write_ucf101

import train_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Random temporal crops, corner crops and flips (--hflip 0.5): the resume test needs the RNG to matter.
COMMON = ["--dataset", "ucf101", "--backbone", "mc3", "--arch", "18", "--clip-len", "4", "--frame-size", "32",
          "--test-clips", "2", "-b", "3", "--epochs", "2", "--lr", "0.05", "--lr-steps", "1", "--print-freq", "1",
          "--device", "cpu"]
RUN = os.path.join("ucf101", "mc318", "snl")
LAST = "1-ucf101-r-18-w-1snl-block.pth.tar"
PROGRESS = re.compile(r"^Epoch \[\d+/2\]\[\d+/2\]  loss [\d.]+ .* clips/s  eta \d+:\d\d:\d\d(  1 CPU thread\(s\))?$",
                      re.M)

# train_video.py with a test-only fault injected from outside: KILL_AT_BATCH=k SIGKILLs the process as its k-th
# training batch is scored; SIGNAL_AT_BATCH=k sends it SIGNAL (default SIGTERM) there, as a cluster would.
RUNNER = """
import os, signal, sys
sys.path.insert(0, {root!r})
import torch
import train_video

at_batch = {{"SIGKILL": int(os.environ.get("KILL_AT_BATCH", "0")),
            os.environ.get("SIGNAL", "SIGTERM"): int(os.environ.get("SIGNAL_AT_BATCH", "0"))}}
if any(at_batch.values()):
    class DyingLoss(torch.nn.CrossEntropyLoss):
        calls = 0
        def forward(self, output, target):
            DyingLoss.calls += 1
            for name, batch in at_batch.items():
                if DyingLoss.calls == batch:
                    os.kill(os.getpid(), getattr(signal, name))
            return super().forward(output, target)
    train_video.build_criterion = lambda args: DyingLoss()

sys.exit(train_video.cli_main(sys.argv[1:]))
"""


def held_out(train):
    """The videos --validation holdout validates on: the split's three highest training groups (here 5-7)."""
    return [video for video in train if int(video[0].split("_g")[1][:2]) >= 5]


def run_runner(folder, argv, **env):
    return run_script(folder, RUNNER, argv, 300, **env)


@pytest.fixture(scope="module")
def ucf_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    splits = write_ucf101(str(root / "data"), fourcc="XVID")
    argv = COMMON + ["--data_dir", root / "data", "--output-dir", root / "out", "-j", "0"]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = train_video.cli_main([str(a) for a in argv])
    assert status == 0, stderr.getvalue()
    return dict(root=root, data=root / "data", splits=splits, run_dir=root / "out" / RUN, stdout=stdout.getvalue())


def test_training_evaluates_clips_each_epoch_and_videos_at_the_end(ucf_run):
    rows, (train, test) = records(ucf_run["run_dir"]), ucf_run["splits"][1]
    val = held_out(train)
    assert [row["epoch"] for row in rows] == [1, 2]
    for row in rows:
        assert {"epoch", "train_loss", "train_top1", "lr", "clip_top1", "clip_top5", "loss", "time"} <= set(row)
        assert 0 <= row["clip_top1"] <= row["clip_top5"] <= 100
    assert "video_top1" not in rows[0]  # the multi-clip test runs after the last epoch only
    assert 0 <= rows[1]["video_top1"] <= rows[1]["video_top5"] <= 100
    assert [row["lr"] for row in rows] == pytest.approx([0.05, 0.005])
    checkpoint = torch.load(ucf_run["run_dir"] / LAST, weights_only=True)
    assert checkpoint["task"] == "video" and checkpoint["epoch"] == 2
    assert checkpoint["model_args"]["backbone"] == "mc3" and checkpoint["model_args"]["num_classes"] == 3
    last = checkpoint["last_eval"]
    assert (last["n"], last["videos"]) == (len(val), len(test))  # each validation / test video once
    assert (last["video_top1"], last["top1"]) == (rows[1]["video_top1"], rows[1]["clip_top1"])
    out = ucf_run["stdout"]
    assert len(PROGRESS.findall(out)) == 4  # 6 training videos / batch 3 = 2 iterations, printed every 1
    assert f"{len(train) - len(val)} train / {len(val)} validation / {len(test)} test videos, 3 classes" in out
    assert "=> validation (--validation holdout): " in out
    assert f"({len(test)} videos x 2 clips, softmax averaged)" in out
    summary = [line for line in out.splitlines() if line.startswith("=> done:")]
    assert len(summary) == 1 and "final clip top-1" in summary[0] and "video top-1" in summary[0] \
        and "best clip top-1" in summary[0]


def test_every_output_is_written(ucf_run):
    run_dir = ucf_run["run_dir"]
    names = sorted(os.listdir(run_dir))
    assert [name for name in names if name.endswith(".pth.tar")] == [LAST, "model_best.pth.tar"]
    assert {"args.yaml", "log_train.txt", "metrics.jsonl"} <= set(names)
    assert "task: video" in (run_dir / "args.yaml").read_text()
    log = (run_dir / "log_train.txt").read_text()
    assert "clips/s" in log and "Video Prec@1" in log and "=> done:" in log
    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    steps = {tag: [event.step for event in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}
    assert steps["Train_Loss"] == steps["Clip_Top1"] == steps["LR"] == [1, 2]
    assert steps["Video_Top1"] == steps["Video_Top5"] == [2]


def test_valid_reproduces_the_final_evaluation(ucf_run, capsys):
    capsys.readouterr()
    stats = train_video.main(train_video.parse_video_args(
        [str(a) for a in COMMON + ["--data_dir", ucf_run["data"], "-j", "0", "--valid", "--check_path",
                                   ucf_run["run_dir"] / LAST]]))
    final = records(ucf_run["run_dir"])[-1]
    assert (stats["top1"], stats["video_top1"], stats["video_top5"]) == \
        (final["clip_top1"], final["video_top1"], final["video_top5"])
    assert stats["loss"] == pytest.approx(final["loss"], rel=1e-6)
    # A checkpoint of another task is refused in one line, naming the entry point to use.
    other = ucf_run["root"] / "classifier.pth.tar"
    torch.save({"state_dict": {}, "model_args": {"backbone": "preresnet", "arch": 20}, "epoch": 1}, other)
    status = train_video.cli_main([str(a) for a in COMMON + ["--data_dir", ucf_run["data"], "--valid",
                                                             "--check_path", other]])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "classification checkpoint" in err and "train_val.py" in err


def test_missing_dataset_is_one_line_and_writes_nothing(tmp_path, capsys):
    status = train_video.cli_main(COMMON + ["--data_dir", str(tmp_path), "--output-dir",
                                            str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "UCF" in err
    assert not (tmp_path / "out").exists()


def test_killed_and_resumed_run_ends_with_the_uninterrupted_weights(ucf_run, tmp_path, capsys):
    """Killed in epoch 2 (3rd batch) with 1 loader worker, resumed with --resume auto: the final weights and the
    metrics equal the uninterrupted run's (0 workers), bit for bit."""
    argv = COMMON + ["--data_dir", ucf_run["data"], "--output-dir", tmp_path / "out", "-j", "1"]
    killed = run_runner(tmp_path, argv, KILL_AT_BATCH="3")
    assert killed.returncode == -9, killed.stderr[-2000:]
    run_dir = tmp_path / "out" / RUN
    assert LAST not in os.listdir(run_dir)
    assert train_video.cli_main([str(a) for a in argv + ["--resume", "auto"]]) == 0  # in this process: faster
    assert "resuming" in capsys.readouterr().out
    expected = torch.load(ucf_run["run_dir"] / LAST, weights_only=True)
    got = torch.load(run_dir / LAST, weights_only=True)
    assert expected["state_dict"].keys() == got["state_dict"].keys()
    for key, value in expected["state_dict"].items():
        assert torch.equal(value, got["state_dict"][key]), key
    strip = [{key: value for key, value in row.items() if key != "time"} for row in records(ucf_run["run_dir"])]
    assert [{key: value for key, value in row.items() if key != "time"} for row in records(run_dir)] == strip


def test_two_processes_count_every_test_video_once_and_sync_bn_matches_one_process(ucf_run, tmp_path, capsys):
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         os.path.join(ROOT, "train_video.py"), *map(str, COMMON), "--epochs", "1", "-j", "0", "--sync-bn",
         "--data_dir", ucf_run["data"], "--output-dir", tmp_path / "ddp"],
        capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = tmp_path / "ddp" / RUN
    train, test = ucf_run["splits"][1]
    double, = records(run_dir)
    checkpoint = torch.load(run_dir / "model_best.pth.tar", weights_only=True)
    # 9 validation videos over 2 shards (5 + 4), 6 test videos (3 + 3): each counted once.
    assert (checkpoint["last_eval"]["n"], checkpoint["last_eval"]["videos"]) == (len(held_out(train)), len(test))
    assert "video_top1" in double and checkpoint["world_size"] == 2 and len(checkpoint["rng_states"]) == 2
    log = (run_dir / "log_train.txt").read_text()
    assert log.count("Epoch [1/1][1/1]") == 1  # 6 videos / (3 x 2) = 1 step, printed by rank 0 only
    assert "batch size 3 per process x 2 process(es) = global batch 6" in log
    # One process with the same global batch (same clips: drawn per (seed, epoch, index)): with BatchNorm3d
    # synchronized, the same statistics and the same averaged gradient, up to float rounding.
    argv = COMMON + ["--epochs", "1", "-j", "0", "-b", "6", "--data_dir", ucf_run["data"], "--output-dir",
                     tmp_path / "one"]
    assert train_video.cli_main([str(a) for a in argv]) == 0
    single, = records(tmp_path / "one" / RUN)
    assert double["train_loss"] == pytest.approx(single["train_loss"], rel=1e-4)
    assert double["loss"] == pytest.approx(single["loss"], rel=1e-3)


def test_fine_tuning_from_kinetics_weights_trains_only_layer4_fc_and_the_block(ucf_run, tmp_path, capsys):
    """--pretrained FILE (a torchvision mc3_18 state_dict of 400 classes, as Kinetics weights) sets
    --ft-begin-index 4: the stem and layer1-3 keep the file's weights, layer4, the new fc and the block train."""
    import torchvision
    torch.manual_seed(5)
    kinetics = torchvision.models.video.mc3_18(num_classes=400).state_dict()
    torch.save(kinetics, tmp_path / "mc3_18_kinetics.pth")
    argv = COMMON + ["--data_dir", ucf_run["data"], "--output-dir", tmp_path / "out", "-j", "0", "--epochs", "1",
                     "--pretrained", tmp_path / "mc3_18_kinetics.pth"]
    assert train_video.cli_main([str(a) for a in argv]) == 0
    assert "frozen: --ft-begin-index 4" in capsys.readouterr().out
    trained = torch.load(tmp_path / "out" / RUN / "0-ucf101-r-18-w-1snl-block.pth.tar", weights_only=True)
    weights = trained["state_dict"]
    # The block sits in layer3 before its last residual block, which moves from index 1 to 2.
    frozen = {key.replace("layer3.1.", "layer3.2."): key for key in kinetics
              if key.split(".")[0] in ("stem", "layer1", "layer2", "layer3")
              and not key.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert len(frozen) > 40 and all(torch.equal(weights[ours], kinetics[theirs]) for ours, theirs in frozen.items())
    assert not torch.equal(weights["layer4.1.conv2.0.weight"], kinetics["layer4.1.conv2.0.weight"])
    assert weights["fc.weight"].shape[0] == 3
    block = [key for key in weights if key not in kinetics and key.endswith("weight")]
    assert block and trained["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.05)


@pytest.mark.parametrize("experiment", ["ucf101", "kinetics"])
def test_train_snl_video_modes_are_the_example_configs(experiment):
    """sh train_snl.sh ucf101 / kinetics run train_video.py with the arguments of configs/<experiment>_*.yaml;
    PRETRAINED=PATH makes the UCF-101 run a fine-tuning from that checkpoint (layer4 + fc + block)."""
    from lib.engine.video.recipe import resolve_video_args

    def commands(**env):
        out = subprocess.run(["sh", os.path.join(ROOT, "train_snl.sh"), experiment], capture_output=True, text=True,
                             check=True, env=dict(os.environ, DRY_RUN="1", DATA_ROOT="./data", **env)).stdout
        lines = [shlex.split(line) for line in out.splitlines()]
        assert all(line[:2] == ["python3", "train_video.py"] for line in lines)
        return [resolve_video_args(train_video.parse_video_args(line[2:])) for line in lines]

    (script,) = commands()
    config, = [name for name in os.listdir(os.path.join(ROOT, "configs")) if name.startswith(experiment + "_")]
    from_config = resolve_video_args(train_video.parse_video_args(["--config", os.path.join(ROOT, "configs",
                                                                                             config)]))
    ignored = {"explicit", "config", "data_dir"}  # the script resolves DATA_ROOT against the caller's directory
    assert {k: v for k, v in vars(from_config).items() if k not in ignored} == \
        {k: v for k, v in vars(script).items() if k not in ignored}
    assert (script.backbone, script.arch, script.nl_type, script.nl_nums, script.ft_begin_index) == \
        ("resnet3d", "50", "snl", 1, 0)
    if experiment == "ucf101":
        weights = os.path.join(ROOT, "README.md")  # any existing file: only resolved here, never loaded
        (tuned,) = commands(PRETRAINED=weights)
        assert (tuned.pretrained, tuned.ft_begin_index, tuned.normalization) == (weights, 4, "activitynet")


def test_valid_uses_the_checkpoints_clip_settings_and_says_so(ucf_run, capsys):
    capsys.readouterr()
    argv = ["--dataset", "ucf101", "--test-clips", "2", "-b", "3", "--device", "cpu", "--data_dir", ucf_run["data"],
            "-j", "0", "--valid", "--check_path", ucf_run["run_dir"] / LAST]  # no clip flags: the recipe's 16 x 112
    stats = train_video.main(train_video.parse_video_args([str(a) for a in argv]))
    final = records(ucf_run["run_dir"])[-1]
    assert (stats["top1"], stats["video_top1"]) == (final["clip_top1"], final["video_top1"])
    out = capsys.readouterr().out  # the run left --normalization unset: the default, so none is named
    assert "=> clips as the checkpoint's run made them: --clip-len 4, --frame-step 1, --frame-size 32\n" in out


class _SetUp(Exception):
    """Stops a run once its setup lines are logged."""


def test_train_crop_flags_reach_the_dataset_and_the_data_lines_are_printed(tmp_path, capsys, monkeypatch):
    root = tmp_path / "ucf"
    write_ucf101(str(root), num_frames=8, height=24, width=32)
    seen, real = {}, train_video.log_setup

    def log_setup(args, ctx, data, model, schedule, log):
        real(args, ctx, data, model, schedule, log)
        seen["transform"] = data["train_set"].transform
        raise _SetUp()

    monkeypatch.setattr(train_video, "log_setup", log_setup)
    argv = ["--dataset", "ucf101", "--data_dir", root, "--backbone", "mc3", "--arch", "18", "--clip-len", "4",
            "--frame-step", "4", "--frame-size", "32", "-b", "2", "-j", "0", "--epochs", "1", "--device", "cpu",
            "--train-crop", "random", "--crop-scales", "1", "0.5", "--output-dir", tmp_path / "out"]
    with pytest.raises(_SetUp):
        train_video.main(train_video.parse_video_args([str(a) for a in argv]))
    assert seen["transform"].train_crop == "random" and seen["transform"].scales == (1.0, 0.5)
    out = capsys.readouterr().out
    assert f"=> data: videos under {root}" in out
    assert "WARNING: => " in out and "are shorter than a clip's span of 13 frames (--clip-len 4 x --frame-step 4)" \
        in out
    defaults = train_video.parse_video_args(["--dataset", "fake"])
    assert defaults.train_crop == "corner" and defaults.crop_scales is None


def test_a_frame_size_below_the_networks_minimum_is_one_line(tmp_path, capsys):
    status = train_video.cli_main(["--dataset", "fake", "--frame-size", "16", "-j", "0", "--output-dir",
                                   str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "--frame-size 16 is below 32" in err, err
