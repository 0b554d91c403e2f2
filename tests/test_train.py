"""End-to-end training runs on tiny data in the real on-disk formats, their outputs, --valid, and bad input."""
import contextlib
import io
import math
import os
import re
import urllib.error

import pytest
import torch
from datagen import write_cifar, write_imagefolder, write_imagenet_lists
from runs import records
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_resume import one_thread  # noqa: F401  (autouse fixture: one CPU thread)

import train_val

FAST = ["--workers", "0", "--print-freq", "1", "--eval-freq", "1"]
PROGRESS = re.compile(r"^Epoch \[(\d+)/\d+\]\[(\d+)/\d+\]  loss ([\d.]+) ", re.M)


def run(argv, capsys):
    """cli_main in this process: (exit status, stdout, stderr)."""
    status = train_val.cli_main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def scalars(run_dir, tag):
    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def snapshot(folder):
    """Every file under folder with its size and modification time: equal snapshots = nothing written."""
    return {os.path.join(d, name): (os.path.getsize(os.path.join(d, name)), os.path.getmtime(os.path.join(d, name)))
            for d, _, names in os.walk(folder) for name in names}


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory):
    """The reference's CIFAR-10 command line, shortened to 2 epochs on 50 images in the CIFAR python format."""
    root = tmp_path_factory.mktemp("cifar")
    write_cifar(root / "data", "cifar10", n_train=50, n_test=20)
    out = root / "out"
    argv = ["--pretrained", "False", "--dataset", "cifar10", "--backbone", "preresnet", "--arch", "20",
            "--data_dir", root / "data", "--nl-type", "snl", "--nl-nums", "1", "--checkpoints", "snl", "--is_norm",
            "--is_sys", "--epochs", "2", "--batch-size", "16", "--output-dir", out] + FAST
    # A module-scoped fixture cannot use capsys: capture by hand.
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = train_val.cli_main([str(a) for a in argv])
    assert status == 0, stderr.getvalue()
    return dict(root=root, data=root / "data", out=out, run_dir=out / "cifar10" / "20" / "snl",
                stdout=stdout.getvalue(), argv=argv)


def test_cifar_run_writes_every_output(cifar_run):
    run_dir = cifar_run["run_dir"]
    names = set(os.listdir(run_dir))
    # Only the newest per-epoch checkpoint is kept (named as the reference: 0-based epoch first).
    assert {"log_train.txt", "args.yaml", "metrics.jsonl", "model_best.pth.tar",
            "1-cifar10-r-20-w-1snl-block.pth.tar"} <= names
    assert "0-cifar10-r-20-w-1snl-block.pth.tar" not in names
    assert any(name.startswith("events.out.tfevents") for name in names)
    assert not [name for name in names if name.endswith(".tmp")]
    log = (run_dir / "log_train.txt").read_text()
    assert "=> done: final top-1" in log and "Epoch [2/2][4/4]" in log


def test_metrics_and_summary_agree(cifar_run):
    rows = records(cifar_run["run_dir"])
    assert [row["epoch"] for row in rows] == [1, 2]
    for row in rows:
        assert {"top1", "top5", "loss", "n", "train_loss", "lr", "time"} <= set(row)
        assert row["n"] == 20  # the whole test set, each image once
    best1 = max(rows, key=lambda row: row["top1"])
    summary = [line for line in cifar_run["stdout"].splitlines() if line.startswith("=> done:")]
    assert summary == [f"=> done: final top-1 {rows[-1]['top1']:.3f} top-5 {rows[-1]['top5']:.3f} (epoch 2) | "
                       f"best top-1 {best1['top1']:.3f} (epoch {best1['epoch']}), best top-5 "
                       f"{max(row['top5'] for row in rows):.3f} (epoch "
                       f"{max(rows, key=lambda row: row['top5'])['epoch']})"]


def test_tensorboard_scalars_hold_the_epoch_mean_loss(cifar_run):
    run_dir = cifar_run["run_dir"]
    train_loss = scalars(run_dir, "Train_Loss")  # tensorboardX spells the tag so
    assert [step for step, _ in train_loss] == [1, 2]
    assert [step for step, _ in scalars(run_dir, "Top1")] == [1, 2]
    assert [step for step, _ in scalars(run_dir, "Top5")] == [1, 2]
    assert len(scalars(run_dir, "LR")) == 2
    # The batches are 16, 16, 16 and 2 images; every batch's loss is printed (print-freq 1).
    sizes = [16, 16, 16, 2]
    for epoch, (_, logged) in enumerate(train_loss, 1):
        losses = [float(m[3]) for m in PROGRESS.finditer(cifar_run["stdout"]) if int(m[1]) == epoch]
        assert len(losses) == 4
        mean = sum(loss * n for loss, n in zip(losses, sizes)) / sum(sizes)
        assert logged == pytest.approx(mean, abs=2e-4)
        assert logged != pytest.approx(losses[-1], abs=1e-3)  # not the last batch's loss, as the reference logged
    for row, (_, logged) in zip(records(run_dir), train_loss):
        assert row["train_loss"] == pytest.approx(logged, rel=1e-6)


def test_checkpoint_contents(cifar_run):
    checkpoint = torch.load(cifar_run["run_dir"] / "1-cifar10-r-20-w-1snl-block.pth.tar", weights_only=True)
    assert {"epoch", "state_dict", "best_prec1", "optimizer", "best_prec5", "best_prec1_epoch", "model_args",
            "rng_states", "lr", "scaler", "args"} <= set(checkpoint)
    assert checkpoint["epoch"] == 2
    assert not [key for key in checkpoint["state_dict"] if key.startswith("module.")]
    assert checkpoint["model_args"]["nl_type"] == "snl" and checkpoint["model_args"]["num_classes"] == 10
    assert checkpoint["model_args"]["is_sys"] is True and checkpoint["model_args"]["is_norm"] is True
    rows = records(cifar_run["run_dir"])
    assert checkpoint["best_prec1"] == max(row["top1"] for row in rows)


def test_valid_reproduces_the_last_evaluation(cifar_run, capsys):
    last = records(cifar_run["run_dir"])[-1]
    status, out, _ = run(["--valid", "--check_path", cifar_run["run_dir"] / "1-cifar10-r-20-w-1snl-block.pth.tar",
                          "--dataset", "cifar10", "--data_dir", cifar_run["data"], "-j", "0"], capsys)
    assert status == 0
    assert f"Final Accuracy: Prec@1 {last['top1']:.3f}, Prec@5 {last['top5']:.3f} (20 images)" in out


def reference_style(checkpoint_path, target):
    """Our checkpoint rewritten as the reference saved it: 4 keys, a "module." prefix (DataParallel)."""
    ours = torch.load(checkpoint_path, weights_only=True)
    torch.save({"epoch": ours["epoch"], "best_prec1": torch.tensor(ours["best_prec1"]), "optimizer": ours["optimizer"],
                "state_dict": {"module." + k: v for k, v in ours["state_dict"].items()}}, target)
    return target


def test_valid_reads_a_reference_checkpoint_and_rejects_another_architecture(cifar_run, capsys, tmp_path):
    path = reference_style(cifar_run["run_dir"] / "1-cifar10-r-20-w-1snl-block.pth.tar", tmp_path / "ref.pth.tar")
    common = ["--valid", "True", "--check_path", path, "--dataset", "cifar10", "--data_dir", cifar_run["data"],
              "-j", "0", "--backbone", "preresnet", "--is_norm", "--is_sys"]
    status, out, _ = run(common + ["--arch", "20"], capsys)
    assert status == 0 and f"Prec@1 {records(cifar_run['run_dir'])[-1]['top1']:.3f}" in out
    status, _, err = run(common + ["--arch", "56"], capsys)
    assert status == 2 and err.count("\n") == 1 and "does not fit preresnet-56" in err


def test_valid_refuses_flags_that_contradict_the_checkpoint(cifar_run, capsys):
    status, _, err = run(["--valid", "--check_path", cifar_run["run_dir"] / "model_best.pth.tar", "--dataset",
                          "cifar10", "--data_dir", cifar_run["data"], "--nl-type", "nl", "-j", "0"], capsys)
    assert status == 2 and err.count("\n") == 1 and "nl_type 'snl' (checkpoint) vs 'nl' (this run)" in err


def test_valid_reads_a_checkpoint_from_before_output_relu(cifar_run, capsys, tmp_path):
    """model_args without output_relu: PreResNet's blocks had the ReLU, so --output-relu agrees and False does not."""
    checkpoint = torch.load(cifar_run["run_dir"] / "model_best.pth.tar", weights_only=True)
    assert checkpoint["model_args"].pop("output_relu") is True
    torch.save(checkpoint, tmp_path / "old.pth.tar")
    common = ["--valid", "--check_path", tmp_path / "old.pth.tar", "--dataset", "cifar10", "--data_dir",
              cifar_run["data"], "-j", "0", "--output-relu"]
    status, out, _ = run(common, capsys)
    assert status == 0 and f"Prec@1 {checkpoint['best_prec1']:.3f}" in out
    status, _, err = run(common + ["False"], capsys)
    assert status == 2 and "output_relu True (checkpoint) vs False (this run)" in err


def test_truncated_checkpoint_is_one_line(cifar_run, capsys, tmp_path):
    source = cifar_run["run_dir"] / "model_best.pth.tar"
    broken = tmp_path / "broken.pth.tar"
    broken.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    status, _, err = run(["--valid", "--check_path", broken, "--dataset", "cifar10", "--data_dir", cifar_run["data"]],
                         capsys)
    assert status == 2 and err.count("\n") == 1 and "truncated or corrupt" in err


def test_resume_from_another_model_is_refused(cifar_run, capsys, tmp_path):
    status, _, err = run(cifar_run["argv"] + ["--nl-type", "nl", "--checkpoints", "other", "--output-dir", tmp_path,
                                              "--resume", cifar_run["run_dir"] / "model_best.pth.tar"], capsys)
    assert status == 2 and err.count("\n") == 1 and "nl_type 'snl' (checkpoint) vs 'nl' (this run)" in err
    assert os.listdir(tmp_path) == []


def test_existing_run_folder_is_not_overwritten(cifar_run, capsys):
    before = snapshot(cifar_run["out"])
    status, _, err = run(cifar_run["argv"], capsys)
    assert status == 2 and err.count("\n") == 1 and "--resume auto" in err
    assert snapshot(cifar_run["out"]) == before


def test_missing_data_and_offline_download_are_one_line(tmp_path, capsys, monkeypatch):
    common = ["--output-dir", tmp_path / "out", "-j", "0", "--epochs", "1"]
    status, _, err = run(["--dataset", "imagenet", "--data_dir", tmp_path / "nowhere"] + common, capsys)
    assert status == 2 and err.count("\n") == 1 and "does not exist" in err

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")
    monkeypatch.setattr("lib.data.cifar.download_and_extract_archive", offline)
    status, _, err = run(["--dataset", "cifar10", "--data_dir", tmp_path / "empty"] + common, capsys)
    assert status == 2 and err.count("\n") == 1 and "could not download CIFAR-10" in err
    assert not (tmp_path / "out").exists()


def test_imagefolder_layout_trains(tmp_path, capsys):
    write_imagefolder(tmp_path / "data", classes=("cat", "dog", "frog"), n_per_class=(6, 2), size=40)
    status, out, err = run(["--dataset", "imagefolder", "--data_dir", tmp_path / "data", "--input-size", "32",
                            "--backbone", "preresnet", "--arch", "20", "--epochs", "1", "-b", "8",
                            "--output-dir", tmp_path / "out"] + FAST, capsys)
    assert status == 0, err
    assert "18 train / 6 val images, 3 classes" in out
    assert records(tmp_path / "out" / "imagefolder" / "20" / "snl")[0]["n"] == 6


def test_imagenet_list_files_resnet50(tmp_path, capsys):
    """The reference's ImageNet command line (ResNet-50, SNL) on its list-file layout, at a 32 px input."""
    write_imagenet_lists(tmp_path / "data", num_classes=3, n_train_per_class=2, n_val=4)
    status, out, err = run(["--pretrained", "False", "--dataset", "imagenet", "--backbone", "resnet", "--arch", "50",
                            "--data_dir", tmp_path / "data", "--nl-type", "snl", "--nl-nums", "1", "--checkpoints",
                            "snl", "--is_norm", "--is_sys", "--input-size", "32", "--epochs", "1", "-b", "6",
                            "--output-dir", tmp_path / "out"] + FAST, capsys)
    assert status == 0, err
    run_dir = tmp_path / "out" / "imagenet" / "50" / "snl"
    assert records(run_dir)[0]["n"] == 4 and math.isfinite(records(run_dir)[0]["loss"])
    assert "0-imagenet-r-50-w-1snl-block.pth.tar" in os.listdir(run_dir)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    """From the 9th batch on (epoch 2 of 8 batches) the loss is NaN: the run stops; epoch 1 stays checkpointed."""
    calls = []

    class PoisonedLoss(torch.nn.CrossEntropyLoss):
        def forward(self, output, target):
            calls.append(1)
            loss = super().forward(output, target)
            return loss * float("nan") if len(calls) > 8 else loss
    monkeypatch.setattr(train_val, "build_criterion", lambda args: PoisonedLoss())
    status, _, err = run(["--dataset", "fake", "--input-size", "16", "--epochs", "3", "-b", "32",
                          "--output-dir", tmp_path] + FAST, capsys)
    assert status == 3 and err.count("\n") == 1 and "non-finite" in err and "epoch 2" in err
    run_dir = tmp_path / "fake" / "20" / "snl"
    assert sorted(name for name in os.listdir(run_dir) if name.endswith(".pth.tar")) == \
        ["0-fake-r-20-w-1snl-block.pth.tar", "model_best.pth.tar"]
    assert [row["epoch"] for row in records(run_dir)] == [1]
    assert "non-finite" in (run_dir / "log_train.txt").read_text()


def test_valid_refuses_a_checkpoint_of_another_dataset(cifar_run, capsys):
    """A CIFAR-10 model evaluated as a CIFAR-100 one used to report 0.000 and exit 0."""
    status, _, err = run(["--valid", "--check_path", cifar_run["run_dir"] / "model_best.pth.tar", "--dataset",
                          "cifar100", "--data_dir", cifar_run["data"], "-j", "0"], capsys)
    assert status == 2 and err.count("\n") == 1 and "was trained on cifar10, not cifar100" in err


def test_args_yaml_records_hflip(cifar_run):
    assert "hflip: 0.5" in (cifar_run["run_dir"] / "args.yaml").read_text()


def test_unreadable_training_image_is_one_line_naming_it_also_in_the_log(tmp_path, capsys):
    write_imagefolder(tmp_path / "data", classes=("a", "b"), n_per_class=(4, 2), size=16)
    bad = tmp_path / "data" / "train" / "b" / "0005.png"
    bad.write_bytes(b"")
    # One loader worker: the error crosses the process boundary and must still be one line.
    status, _, err = run(["--dataset", "imagefolder", "--data_dir", tmp_path / "data", "--input-size", "16",
                          "--backbone", "preresnet", "--arch", "20", "--epochs", "1", "-b", "8",
                          "--output-dir", tmp_path / "out", "--workers", "1",
                          "--print-freq", "1"], capsys)
    assert status == 2 and err.count("\n") == 1 and f"cannot read image {bad}" in err, err
    assert "Traceback" not in err
    log = tmp_path / "out" / "imagefolder" / "20" / "snl" / "log_train.txt"
    assert f"ERROR: cannot read image {bad}" in log.read_text()


def test_unreadable_validation_image_keeps_the_trained_epoch(tmp_path, capsys):
    """The epoch is checkpointed before the error; the resume evaluates it first, then trains on."""
    write_imagefolder(tmp_path / "data", classes=("a", "b"), n_per_class=(4, 2), size=16)
    bad = tmp_path / "data" / "val" / "a" / "0001.png"
    good = bad.read_bytes()
    bad.write_bytes(b"")
    argv = ["--dataset", "imagefolder", "--data_dir", tmp_path / "data", "--input-size", "16", "--backbone",
            "preresnet", "--arch", "20", "--epochs", "2", "-b", "8", "--output-dir", tmp_path / "out"] + FAST
    status, _, err = run(argv, capsys)
    assert status == 2 and err.count("\n") == 1 and f"cannot read image {bad}" in err, err
    assert "epoch 1 is trained and checkpointed" in err
    run_dir = tmp_path / "out" / "imagefolder" / "20" / "snl"
    checkpoint = torch.load(run_dir / "0-imagefolder-r-20-w-1snl-block.pth.tar", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["pending_eval"]["lr"] > 0
    assert f"cannot read image {bad}" in (run_dir / "log_train.txt").read_text()
    assert not (run_dir / "metrics.jsonl").exists() or records(run_dir) == []

    bad.write_bytes(good)
    status, out, err = run(argv + ["--resume", "auto"], capsys)
    assert status == 0, err
    assert "evaluating epoch 1 first" in out
    rows = records(run_dir)
    assert [row["epoch"] for row in rows] == [1, 2] and rows[0]["n"] == 4
    assert rows[0]["train_loss"] == checkpoint["pending_eval"]["train_loss"]
    assert torch.load(run_dir / "1-imagefolder-r-20-w-1snl-block.pth.tar", weights_only=True)["pending_eval"] is None


def test_records_of_a_run_without_checkpoints_are_not_overwritten(tmp_path, capsys, monkeypatch):
    """A run stopped before its first checkpoint leaves its log and args.yaml: a new run there must not
    overwrite them (before, it rewrote args.yaml and dropped metrics rows); --resume auto continues it."""
    class NanLoss(torch.nn.CrossEntropyLoss):
        def forward(self, output, target):
            return super().forward(output, target) * float("nan")
    argv = ["--dataset", "fake", "--input-size", "8", "--epochs", "1", "-b", "128", "--output-dir", tmp_path] + FAST
    monkeypatch.setattr(train_val, "build_criterion", lambda args: NanLoss())
    assert run(argv, capsys)[0] == 3
    monkeypatch.undo()
    before = snapshot(tmp_path)
    status, _, err = run(argv, capsys)
    assert status == 2 and err.count("\n") == 1 and "holds the args.yaml, log_train.txt" in err, err
    assert snapshot(tmp_path) == before
    assert run(argv + ["--resume", "auto"], capsys)[0] == 0
