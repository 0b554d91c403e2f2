"""train_det.py on the shared run lifecycle: a fake COCO-format set (8 + 8 generated images), Mask R-CNN on
ResNet-18 with one SNL block at 64-96 px, batch 2: 4 iterations per epoch, 2 epochs (lr x 0.1 after the first,
a warm-up over the first 2 iterations).

Training and COCO evaluation write every output; a kill -9 inside an epoch resumes bit for bit from its mid-epoch
checkpoint; SIGTERM checkpoints, exits 75 and the resume is exact; two gloo processes evaluate every image once
with the AP of one process; --valid --save-predictions writes COCO results with the dataset's own category ids;
a checkpoint of another task is refused in one line."""
import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import ROOT
from runs import assert_same_training_state, records, run_script
from test_resume import event_scalars, one_thread  # noqa: F401  (one_thread: autouse fixture, one CPU thread)

import train_det
from lib.engine.errors import PREEMPTED_STATUS

COMMON = ["--dataset", "fake", "--model", "maskrcnn", "--arch", "18", "--nl-type", "snl", "--min-size", "64",
          "--max-size", "96", "-b", "2", "-j", "0", "--print-freq", "1", "--device", "cpu"]
RUN = os.path.join("fake", "maskrcnn18", "snl")
LAST = "1-fake-r-18-w-1snl-block.pth.tar"  # the checkpoint of epoch 2
FAKE_CATEGORIES = {1, 3, 7}  # lib/data/fake_coco.py: ids with gaps, as COCO's

# train_det.py with a test-only fault injected from outside: KILL_AT_BATCH=k SIGKILLs the process as its k-th
# training loss is summed; SIGNAL_AT_BATCH=k sends it SIGTERM there, as a cluster would.
RUNNER = """
import os, signal, sys
sys.path.insert(0, {root!r})
import train_det

at_batch = {{"SIGKILL": int(os.environ.get("KILL_AT_BATCH", "0")),
            "SIGTERM": int(os.environ.get("SIGNAL_AT_BATCH", "0"))}}
class DyingLoss(train_det.LossSum):
    calls = 0
    def forward(self, losses):
        DyingLoss.calls += 1
        for name, batch in at_batch.items():
            if DyingLoss.calls == batch:
                os.kill(os.getpid(), getattr(signal, name))
        return super().forward(losses)
train_det.build_criterion = lambda args: DyingLoss()
sys.exit(train_det.cli_main(sys.argv[1:]))
"""


def rows(run_dir):
    return [{key: value for key, value in row.items() if key != "time"} for row in records(run_dir)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run that every resumed one must reproduce."""
    root = tmp_path_factory.mktemp("det_straight")
    argv = COMMON + ["--data-dir", root / "data", "--output-dir", root / "out"]
    assert train_det.cli_main([str(a) for a in argv]) == 0
    return dict(data=root / "data", run_dir=root / "out" / RUN)


def argv_of(straight, out, *more):
    return [str(a) for a in COMMON + ["--data-dir", straight["data"], "--output-dir", out, *more]]


def test_training_evaluates_coco_ap_each_epoch_and_writes_every_output(straight):
    run_dir = straight["run_dir"]
    assert {LAST, "model_best.pth.tar", "metrics.jsonl", "log_train.txt", "args.yaml"} <= set(os.listdir(run_dir))
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(run_dir))
    got = records(run_dir)
    assert [row["epoch"] for row in got] == [1, 2]
    assert [row["lr"] for row in got] == pytest.approx([0.0025, 0.00025])  # the fake recipe, x 0.1 at epoch 1
    for row in got:
        assert row["n"] == 8 and row["train_loss"] > 0
        for key in ("bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP", "segm_AP50", "segm_AR100"):
            assert 0 <= row[key] <= 100 or row[key] == -1, key  # percent; COCOeval's -1 = no object of that size
    with open(run_dir / "args.yaml") as f:
        saved = yaml.safe_load(f)
    assert (saved["task"], saved["model"], saved["min_size"], saved["max_size"]) == ("detection", "maskrcnn", 64, 96)
    assert (saved["frozen_bn"], saved["trainable_backbone_layers"], saved["labels_as_ids"]) == (False, 5, False)
    checkpoint = torch.load(run_dir / LAST, weights_only=True)
    assert checkpoint["model_args"]["backbone"] == "maskrcnn" and checkpoint["task"] == "detection"
    best = max(got, key=lambda row: row["bbox_AP"])
    assert checkpoint["best_bbox_AP"] == best["bbox_AP"] and checkpoint["best_bbox_AP_epoch"] == best["epoch"]
    log = (run_dir / "log_train.txt").read_text()
    # The warm-up by iterations: iteration 0 at lr x 0.001, iteration 2 (the warm-up's end) at the lr.
    lrs = [line.split("  lr ")[1].split()[0] for line in log.splitlines() if line.startswith("Epoch [1/2]")]
    assert lrs == ["2.5e-06", "0.00125125", "0.0025", "0.0025"]
    assert "img/s" in log and "eta" in log
    assert "bbox:" in log and "segm:" in log and "Average Precision" in log  # COCOeval's summary, alone
    assert "Loading and preparing results" not in log
    summary, = [line for line in log.splitlines() if line.startswith("=> done:")]
    assert "final box AP" in summary and "mask AP" in summary and "best box AP" in summary
    logged = event_scalars(run_dir)
    for tag in ("Train_Loss", "LR", "Box_AP", "Mask_AP"):
        assert [step for step, _ in logged[tag]] == [1, 2], tag


def test_the_warm_up_is_linear_in_iterations_then_the_step_schedule():
    from lib.engine.detection.setup import IterationWarmup
    from lib.engine.schedule import WarmupStepSchedule
    schedule = IterationWarmup(WarmupStepSchedule(0.02, [16, 22], 0), warmup_iters=1000, warmup_factor=0.001)
    assert schedule.lr_in_epoch(0, 0, 7330) == pytest.approx(0.02 * 0.001)
    assert schedule.lr_in_epoch(0, 500, 7330) == pytest.approx(0.02 * (0.001 + 0.999 * 0.5))
    assert schedule.lr_in_epoch(0, 1000, 7330) == schedule.lr_at(0) == 0.02
    assert schedule.lr_in_epoch(16, 0, 7330) == pytest.approx(0.002)
    assert schedule.lr_in_epoch(1, 3, 4) == pytest.approx(0.02 * (0.001 + 0.999 * 7 / 1000))  # counted over epochs
    assert schedule.state_dict()["warmup_iters"] == 1000


def test_killed_inside_an_epoch_resumes_from_its_mid_epoch_checkpoint_bit_for_bit(straight, tmp_path, capsys):
    """--save-every 2: a checkpoint after iteration 2 of epoch 1 (inside the warm-up's end); killed -9 in its 3rd
    iteration; --resume auto continues from iteration 2 and ends as the uninterrupted run."""
    argv = argv_of(straight, tmp_path / "out", "--save-every", "2")
    killed = run_script(tmp_path, RUNNER, argv, 600, KILL_AT_BATCH="3")
    assert killed.returncode == -9, killed.stderr[-2000:]
    run_dir = tmp_path / "out" / RUN
    assert [name for name in os.listdir(run_dir) if name.endswith(".pth.tar")] == \
        ["0-fake-r-18-w-1snl-block.iter2.pth.tar"]
    assert train_det.cli_main(argv + ["--resume", "auto"]) == 0
    assert "0 epoch(s) and 2 iteration(s) of epoch 1 done" in capsys.readouterr().out
    assert not [name for name in os.listdir(run_dir) if ".iter" in name]
    assert_same_training_state(*(torch.load(folder / LAST, weights_only=True)
                                 for folder in (straight["run_dir"], run_dir)))
    assert rows(run_dir) == rows(straight["run_dir"])  # the same losses and APs


def test_sigterm_checkpoints_inside_the_epoch_exits_75_and_the_resume_is_exact(straight, tmp_path, capsys):
    argv = argv_of(straight, tmp_path / "out")
    stopped = run_script(tmp_path, RUNNER, argv, 600, SIGNAL_AT_BATCH="6")  # epoch 2, its 2nd iteration
    assert stopped.returncode == PREEMPTED_STATUS, stopped.stderr[-2000:]
    run_dir = tmp_path / "out" / RUN
    mid = run_dir / "1-fake-r-18-w-1snl-block.iter2.pth.tar"
    assert stopped.stderr == f"train_det.py: stopped by SIGTERM at epoch 2, iteration 2; checkpoint {mid}; " \
                             f"continue with --resume auto\n"
    assert [row["epoch"] for row in records(run_dir)] == [1]
    assert train_det.cli_main(argv + ["--resume", "auto"]) == 0
    assert "1 epoch(s) and 2 iteration(s) of epoch 2 done" in capsys.readouterr().out
    assert_same_training_state(*(torch.load(folder / LAST, weights_only=True)
                                 for folder in (straight["run_dir"], run_dir)))
    assert rows(run_dir) == rows(straight["run_dir"])


def test_valid_writes_coco_results_with_the_datasets_category_ids(straight, tmp_path, capsys):
    """--valid --save-predictions: the results file loads with pycocotools (COCO.loadRes) against the validation
    annotations, its category ids are the file's own (1, 3, 7), and the APs are the training run's."""
    from lib.data.coco import read_coco_json
    best = torch.load(straight["run_dir"] / "model_best.pth.tar", weights_only=True)
    predictions = tmp_path / "results.json"
    argv = argv_of(straight, tmp_path / "out", "--valid", "--check_path", straight["run_dir"] / "model_best.pth.tar",
                   "--save-predictions", predictions)
    stats = train_det.main(train_det.parse_det_args(argv))
    assert "wrote" in capsys.readouterr().out and not (tmp_path / "out").exists()  # --valid writes no run folder
    for key in ("bbox_AP", "segm_AP", "bbox_AP50"):
        assert stats[key] == best["last_eval"][key], key
    gt = read_coco_json(str(straight["data"] / "fake_coco_val" / "annotations.json"))
    detections = gt.loadRes(str(predictions))
    assert len(detections.anns) > 0 and {a["category_id"] for a in detections.anns.values()} <= FAKE_CATEGORIES
    assert all("segmentation" in a and len(a["bbox"]) == 4 for a in detections.anns.values())


def test_two_processes_evaluate_every_image_once_with_the_ap_of_one(straight, tmp_path):
    """torchrun, 2 gloo processes, 1 epoch: each validates its contiguous shard (4 + 4 images), the results are
    gathered and evaluated once; the APs equal one process's --valid of the same checkpoint."""
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         os.path.join(ROOT, "train_det.py"), *argv_of(straight, tmp_path / "ddp", "--epochs", "1")],
        capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = tmp_path / "ddp" / RUN
    double, = records(run_dir)
    assert double["n"] == 8
    log = (run_dir / "log_train.txt").read_text()
    assert "batch size 2 per process x 2 process(es) = global batch 4" in log
    assert log.count("Epoch [1/1][2/2]") == 1  # 8 images / (2 x 2) = 2 steps, printed by rank 0 only
    checkpoint = run_dir / "0-fake-r-18-w-1snl-block.pth.tar"
    single = train_det.main(train_det.parse_det_args(argv_of(straight, tmp_path / "one", "--valid", "--check_path",
                                                             checkpoint)))
    for key in ("bbox_AP", "bbox_AP50", "segm_AP", "n"):
        assert single[key] == pytest.approx(double[key]), key


def test_a_checkpoint_of_another_task_is_refused_in_one_line(tmp_path, capsys):
    other = tmp_path / "classifier.pth.tar"
    torch.save({"state_dict": {}, "model_args": {"backbone": "preresnet", "arch": 20}, "epoch": 1,
                "args": {"dataset": "fake"}}, other)
    status = train_det.cli_main(COMMON + ["--data-dir", str(tmp_path / "data"), "--valid", "--check_path", str(other)])
    assert status == 2
    assert capsys.readouterr().err == f"train_det.py: error: {other} is a classification checkpoint, not a " \
                                      f"detection one: use it with train_val.py\n"


def test_train_snl_coco_is_the_example_config():
    """sh train_snl.sh coco runs train_det.py with the arguments of configs/coco_maskrcnn50_snl.yaml: torchvision's
    COCO Mask R-CNN R50-FPN + one SNL block, COCO ids as labels, frozen BN, 3 trained stages, the 26-epoch recipe."""
    import shlex

    from lib.engine.detection.recipe import resolve_det_args
    out = subprocess.run(["sh", os.path.join(ROOT, "train_snl.sh"), "coco"], capture_output=True, text=True,
                         check=True, env=dict(os.environ, DRY_RUN="1", DATA_ROOT="./data/coco")).stdout
    (line,) = [shlex.split(text) for text in out.splitlines()]
    assert line[:2] == ["python3", "train_det.py"]
    script = resolve_det_args(train_det.parse_det_args(line[2:]))
    config = resolve_det_args(train_det.parse_det_args(["--config", os.path.join(ROOT, "configs",
                                                                                   "coco_maskrcnn50_snl.yaml")]))
    ignored = {"explicit", "config", "data_dir"}  # the script resolves DATA_ROOT against the caller's directory
    assert {k: v for k, v in vars(config).items() if k not in ignored} == \
        {k: v for k, v in vars(script).items() if k not in ignored}
    assert (script.model, script.arch, script.nl_type, script.pretrained, script.labels_as_ids) == \
        ("maskrcnn", "50", "snl", True, True)
    assert (script.frozen_bn, script.trainable_backbone_layers, script.epochs, script.lr_steps, script.lr) == \
        (True, 3, 26, [16, 22], 0.02)
    one_x = resolve_det_args(train_det.parse_det_args(["--schedule", "1x"]))
    assert (one_x.epochs, one_x.lr_steps, one_x.warmup_iters, one_x.labels_as_ids) == (12, [8, 11], 1000, False)


def test_frozen_bn_without_pretrained_weights_is_refused(capsys):
    assert train_det.cli_main(["--dataset", "fake", "--frozen-bn", "True"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--frozen-bn True needs pretrained weights" in err


def test_the_commands_of_docs_detection_md_use_real_flags(monkeypatch):
    """Every train_det.py command line in docs/detection.md parses, and each training one resolves (no data read)."""
    monkeypatch.chdir(ROOT)  # --config configs/...: relative to the repository, as the docs run it
    import shlex

    from lib.engine.detection.recipe import resolve_det_args
    with open(os.path.join(ROOT, "docs", "detection.md")) as f:
        text = f.read().replace("\\\n", " ")
    commands = [shlex.split(line.split("train_det.py", 1)[1].split("#")[0]) for line in text.splitlines()
                if "train_det.py --" in line]
    assert len(commands) >= 7
    for argv in commands:
        args = train_det.parse_det_args(argv)
        if not args.valid:
            resolve_det_args(args)


def test_valid_refuses_flags_that_ask_for_another_model(straight, capsys):
    """--valid rebuilds the checkpoint's model; a --model or block flag asking for another one is one line."""
    best = straight["run_dir"] / "model_best.pth.tar"
    for flags, message in ((["--model", "fasterrcnn"], "holds a maskrcnn model, not --model fasterrcnn"),
                           (["--nl-type", "nl"], "holds another model than the flags ask for")):
        argv = argv_of(straight, straight["run_dir"].parent / "unused", "--valid", "--check_path", best)
        assert train_det.cli_main([a for a in argv if a not in ("--model", "maskrcnn")] + flags) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
