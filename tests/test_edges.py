"""The edges a new user reaches: a checkpoint of the wrong kind, a resume with changed settings, a folder left by a
killed run, --valid without the train split or --dataset, slow CPU settings, and the smaller points (run folder of
an order, records of a resume with nothing to do, flag names in errors, train_snl.sh paths)."""
import contextlib
import io
import os
import shlex
import shutil
import subprocess

import pytest
import torch
import yaml
from test_cli import exit_status, resolved
from test_resume import one_thread  # noqa: F401  (autouse fixture: one CPU thread)
from test_segmentation import TINY, write_cityscapes
from test_train import snapshot

import train_seg
import train_val
from lib.engine import runtime
from lib.engine.resume_check import EPOCH_BASED, RESUMABLE, changed_settings, check_resume_settings, resume_args_path
from lib.engine.segmentation.cli import parse_seg_args, resolve_seg_args
from lib.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One epoch of PreResNet-20 on 256 fake 16x16 images, no warm-up.
FAKE = ["--dataset", "fake", "--input-size", "16", "-b", "64", "-j", "0", "--eval-freq", "1", "--warmup-epochs", "0",
        "--lr-steps", "9", "--print-freq", "100", "--epochs", "1"]
CKPT = "0-fake-r-20-w-1snl-block.pth.tar"


class Recorder:
    """A RunLogger stand-in that keeps its warnings."""

    def __init__(self):
        self.warnings = []

    def warn(self, text):
        self.warnings.append(text)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 1-epoch classification run (copied by the tests that change it) and its stdout."""
    out = tmp_path_factory.mktemp("edges")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert train_val.cli_main(FAKE + ["--output-dir", str(out)]) == 0
    return out, stdout.getvalue()


def copy_of(finished_run, tmp_path):
    shutil.copytree(finished_run[0], tmp_path / "out")
    return tmp_path / "out", tmp_path / "out" / "fake" / "20" / "snl"


def seg_checkpoint(path, dataset="fake"):
    """A segmentation checkpoint as train_seg.py writes it (the weights are never reached by these tests)."""
    torch.save({"iteration": 2, "model_args": {"backbone": "resnet", "arch": "50", "num_classes": 19, "aux": True},
                "state_dict": {"w": torch.zeros(1)}, "args": {"dataset": dataset, "task": "segmentation"}}, path)
    return path


def video_checkpoint(path):
    torch.save({"epoch": 1, "model_args": {"backbone": "r3d", "arch": "18", "num_classes": 101},
                "state_dict": {"w": torch.zeros(1)}, "dataset": "fake", "args": {"task": "video"}}, path)
    return path


def one_line(capsys):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------ 3: a checkpoint of the wrong kind is one line

@pytest.mark.parametrize("kind,make", [("segmentation", seg_checkpoint), ("video", video_checkpoint)])
@pytest.mark.parametrize("mode", [["--valid", "--check_path"], ["--dataset", "fake", "--valid", "--check_path"],
                                  ["--dataset", "fake", "--resume"]])
def test_train_val_refuses_another_tasks_checkpoint(tmp_path, capsys, kind, make, mode):
    path = make(tmp_path / "other.pth.tar")
    assert exit_status(mode + [str(path), "--output-dir", str(tmp_path / "out"), "-j", "0"]) == 2
    err = one_line(capsys)
    assert f"is a {kind} checkpoint, not a classification one: use it with train_" in err
    assert not (tmp_path / "out").exists()


def test_train_seg_refuses_a_classification_checkpoint(finished_run, tmp_path, capsys):
    path = finished_run[0] / "fake" / "20" / "snl" / CKPT
    for dataset in ([], ["--dataset", "fake"]):
        assert train_seg.cli_main(dataset + ["--valid", "--check_path", str(path), "-j", "0"]) == 2
        assert "is a classification checkpoint, not a segmentation one: use it with train_val.py" in one_line(capsys)


def test_new_checkpoints_and_args_carry_their_task(finished_run):
    run_dir = finished_run[0] / "fake" / "20" / "snl"
    assert yaml.safe_load((run_dir / "args.yaml").read_text())["task"] == "classification"
    assert torch.load(run_dir / CKPT, weights_only=True)["args"]["task"] == "classification"
    assert resolve_seg_args(parse_seg_args(["--dataset", "fake"])).task == "segmentation"


# ---------------------------------------------------------------- 4: a resume with changed settings says so

def test_resume_with_changed_settings_is_refused_then_allowed_and_recorded(finished_run, tmp_path, capsys):
    out, run_dir = copy_of(finished_run, tmp_path)
    (run_dir / "args_resume_1.yaml").write_text("kept: true\n")  # an earlier resume's record
    before = snapshot(run_dir)
    changed = ["--lr", "0.05", "-b", "32", "--seed", "5", "--hflip", "0"]
    assert exit_status(FAKE + ["--output-dir", str(out), "--resume", "auto", "--epochs", "2"] + changed) == 2
    err = one_line(capsys)
    for difference in ("--lr 0.1 -> 0.05", "--batch-size 64 -> 32", "--seed 67 -> 5", "--hflip 0.5 -> 0.0"):
        assert difference in err, err
    assert "--allow-changed" in err and "--epochs" not in err
    assert snapshot(run_dir) == before  # nothing written

    assert exit_status(FAKE + ["--output-dir", str(out), "--resume", "auto", "--epochs", "2", "--allow-changed"]
                       + changed) == 0
    assert "--allow-changed: resuming" in capsys.readouterr().out
    assert (run_dir / "args_resume_1.yaml").read_text() == "kept: true\n"  # never overwritten
    record = yaml.safe_load((run_dir / "args_resume_1_2.yaml").read_text())
    assert record["allow_changed"] is True and record["changed_on_resume"]["lr"] == {"was": 0.1, "now": 0.05}


def test_settings_meant_to_change_on_a_resume_pass():
    saved = vars(resolved(FAKE))
    args = resolved(FAKE[:-1] + ["3", "--workers", "2", "--print-freq", "7", "--eval-freq", "2", "--device", "cpu",
                                 "--keep-checkpoints", "0", "--resume", "auto", "--output-dir", "elsewhere"])
    assert changed_settings(saved, args, RESUMABLE | EPOCH_BASED) == {}
    # Another number of processes (warned about apart) with the same global batch is the same setting.
    two = {"args": dict(saved, batch_size=32, sync_bn=True), "world_size": 2}
    assert check_resume_settings(two, "ckpt", resolved(FAKE), Recorder()) == {}
    with pytest.raises(ConfigError, match=r"--batch-size 32 x 2 processes -> 64 x 4 processes, --sync-bn True -> "):
        check_resume_settings(two, "ckpt", resolved(FAKE), Recorder(), world_size=4)
    # A poly schedule spans all iterations: more --iters changes the run, so train_seg.py compares it.
    seg = resolve_seg_args(parse_seg_args(TINY))
    longer = resolve_seg_args(parse_seg_args(TINY + ["--iters", "50000", "--eval-every", "10", "-j", "0"]))
    with pytest.raises(ConfigError, match=r"--iters 40000 -> 50000"):
        check_resume_settings({"args": vars(seg)}, "iter_2.pth.tar", longer, Recorder(), RESUMABLE)


# ------------------------------------------------------------ 5: a killed run's records are never overwritten

@pytest.mark.parametrize("entry,argv,run_dir", [
    (train_val.cli_main, FAKE, ("fake", "20", "snl")),
    (train_seg.cli_main, TINY + ["--iters", "1", "-j", "0"], ("fake", "resnet50", "snl")),
])
def test_every_entry_point_refuses_a_killed_runs_records(tmp_path, capsys, entry, argv, run_dir):
    folder = tmp_path.joinpath(*run_dir)
    folder.mkdir(parents=True)
    (folder / "args.yaml").write_text("seed: 1\n")
    (folder / "log_train.txt").write_text("killed before its first checkpoint\n")
    before = snapshot(folder)
    assert entry(argv + ["--output-dir", str(tmp_path)]) == 2
    err = one_line(capsys)
    assert "holds the args.yaml, log_train.txt of an earlier run" in err and "--resume auto" in err
    assert snapshot(folder) == before


# ------------------------------------------------- 6 and 9: --valid needs only what it evaluates, and its dataset

def test_seg_valid_reads_only_the_val_split(tmp_path):
    write_cityscapes(tmp_path / "cityscapes", cities={"val": {"frankfurt": 1}})
    assert not (tmp_path / "cityscapes" / "leftImg8bit" / "train").exists()
    args = resolve_seg_args(parse_seg_args(["--data_dir", str(tmp_path), "--pretrained", "False"]))
    train_set, val_set = train_seg.build_seg_datasets(args, train=False)
    assert train_set is None and len(val_set) > 0


def test_seg_valid_refuses_a_checkpoint_of_another_dataset(tmp_path, capsys):
    path = seg_checkpoint(tmp_path / "fake.pth.tar", dataset="fake")
    argv = ["--dataset", "cityscapes", "--data_dir", str(tmp_path), "--valid", "--check_path", str(path)]
    assert train_seg.cli_main(argv) == 2
    assert "was trained on fake, not cityscapes: pass --dataset fake" in one_line(capsys)


def test_valid_takes_the_dataset_from_the_checkpoint(finished_run, capsys):
    path = finished_run[0] / "fake" / "20" / "snl" / CKPT
    assert exit_status(["--valid", "--check_path", str(path), "--input-size", "16", "-j", "0"]) == 0
    out = capsys.readouterr().out
    assert "Final Accuracy" in out and "(128 images)" in out  # the fake validation set, not ImageNet


# ------------------------------------------------------------------ 7: costly defaults and silent slowness

@pytest.mark.parametrize("size,recipe,model", [(None, "imagenet", ("resnet", "50")), (32, "cifar", ("preresnet", "20")),
                                               (64, "cifar", ("preresnet", "20")), (96, "imagenet", ("resnet", "50"))])
def test_imagefolder_recipe_follows_the_input_size(size, recipe, model):
    args = resolved(["--dataset", "imagefolder"] + (["--input-size", str(size)] if size else []))
    assert (args.recipe, (args.backbone, args.arch)) == (recipe, model)
    from lib.engine.classification.recipe import recipe_line
    assert f"recipe {recipe} (imagefolder at {size or 224} px" in recipe_line(args)
    assert resolved(["--dataset", "imagefolder", "--recipe", "imagenet", "--input-size", "32"]).backbone == "resnet"


@pytest.mark.parametrize("amp,native,warned", [("bf16", False, True), ("bf16", True, False), ("fp16", True, True),
                                               ("off", False, False)])
def test_slow_cpu_amp_warns(monkeypatch, amp, native, warned):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    log = Recorder()
    runtime.warn_slow_amp(amp, torch.device("cpu"), log)
    assert bool(log.warnings) == warned and all(f"--amp {amp}" in text for text in log.warnings)
    runtime.warn_slow_amp(amp, torch.device("cuda"), log)  # never on an accelerator (nothing runs there)
    assert bool(log.warnings) == warned


def test_train_seg_warns_about_slow_amp_too(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    folder = tmp_path / "fake" / "resnet50" / "snl"
    folder.mkdir(parents=True)
    (folder / "args.yaml").write_text("seed: 1\n")  # refused right after the warning: nothing is trained
    assert train_seg.cli_main(TINY + ["--iters", "1", "--amp", "bf16", "--output-dir", str(tmp_path)]) == 2
    assert "--amp bf16 on a CPU without native bf16" in capsys.readouterr().out


def test_first_progress_line_of_a_cpu_run_reports_the_threads(finished_run):
    lines = [line for line in finished_run[1].splitlines() if line.startswith("Epoch [")]
    assert lines[0].endswith(f"  {torch.get_num_threads()} CPU thread(s)")


# ------------------------------------------------------------------------------------- 9: smaller points

@pytest.mark.parametrize("argv,folder", [(["--nl-type", "cheb", "--order", "3"], "cheb3"),
                                         (["--nl-type", "arma", "--order", "4"], "arma4"),
                                         (["--nl-type", "cheb", "--order", "2"], "cheb"),
                                         (["--nl-type", "cheb"], "cheb")])
def test_runs_of_other_orders_get_their_own_folder(argv, folder):
    assert resolved(["--dataset", "fake"] + argv).checkpoints == folder


def test_resume_with_nothing_to_train_writes_no_records(finished_run, tmp_path, capsys):
    out, run_dir = copy_of(finished_run, tmp_path)
    before = set(os.listdir(run_dir))
    assert exit_status(FAKE + ["--output-dir", str(out), "--resume", "auto"]) == 0
    assert "nothing left to train" in capsys.readouterr().out
    assert set(os.listdir(run_dir)) == before  # no empty event file, no args_resume_1.yaml
    assert resume_args_path(str(run_dir), 1).endswith("args_resume_1.yaml")


def test_no_warmup_line_without_warmup(finished_run):
    assert "warm-up" not in finished_run[1]


@pytest.mark.parametrize("argv,message", [
    (["--nl-type", "cheb", "--order", "0"], "--order must be a positive integer, got 0"),
    (["--nl-type", "snl", "--order", "3"], "--order applies to cheb and arma only, not to --nl-type snl"),
])
def test_errors_name_the_flag(tmp_path, capsys, argv, message):
    assert exit_status(["--dataset", "fake", "--output-dir", str(tmp_path)] + argv) == 2
    assert message in one_line(capsys)


def test_data_dir_naming_a_file_says_so(tmp_path, capsys):
    afile = tmp_path / "cifar.tar.gz"
    afile.write_text("an archive")
    assert exit_status(["--dataset", "cifar10", "--data_dir", str(afile), "--output-dir", str(tmp_path)]) == 2
    assert f"--data_dir {afile} is a file, not a folder" in one_line(capsys)
    assert train_seg.cli_main(["--data_dir", str(afile)]) == 2
    assert f"--data_dir {afile} is a file, not a folder" in one_line(capsys)


def test_train_snl_resolves_relative_paths_against_the_callers_folder(tmp_path):
    env = dict(os.environ, DRY_RUN="1", DATA_ROOT="mydata")
    out = subprocess.run(["sh", os.path.join(ROOT, "train_snl.sh"), "cifar10", "--output-dir", "runs",
                          "--data_dir=other", "--epochs", "2"], env=env, cwd=tmp_path, capture_output=True,
                         text=True, check=True)
    (argv,) = [shlex.split(line)[2:] for line in out.stdout.splitlines()]
    args = resolved(argv)
    assert args.output_dir == str(tmp_path / "runs") and args.data_dir == str(tmp_path / "other")
    assert f"--data_dir {tmp_path / 'mydata'}" in out.stdout and args.epochs == 2
    assert f"compare_runs.py {tmp_path / 'runs'}/cifar10/20/snl" in out.stderr


def test_a_resume_before_the_first_evaluation_says_no_evaluation_yet():
    from lib.engine.classification.run import accuracy_tracker
    fresh = accuracy_tracker().restored(accuracy_tracker().checkpoint_entries())  # a checkpoint before any
    assert fresh.resume_line() == "no evaluation yet"
    evaluated = accuracy_tracker()
    evaluated.update(2, {"top1": 40.0, "top5": 90.0})
    assert evaluated.restored(evaluated.checkpoint_entries()).resume_line() == \
        "best top-1 40.000 (epoch 2), best top-5 90.000 (epoch 2)"


def test_a_run_shorter_than_its_warmup_warns_once(tmp_path, capsys):
    assert train_val.cli_main(FAKE + ["--warmup-epochs", "3", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("WARNING: --epochs 1 ends inside the 3 warm-up epochs") == 1, out


def test_a_crop_too_small_for_the_output_stride_is_refused_up_front(tmp_path, capsys):
    from lib.engine.segmentation.cli import MIN_CROP_SIDE
    from models.segmentation import build_segmentor
    model = build_segmentor(arch=50, num_classes=4, nl_type="snl").train()  # the minimum is what trains
    with torch.no_grad():
        model(torch.randn(1, 3, MIN_CROP_SIDE, MIN_CROP_SIDE))
        with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
            model(torch.randn(1, 3, MIN_CROP_SIDE - 1, MIN_CROP_SIDE - 1))
    status = train_seg.cli_main(["--dataset", "fake", "--crop-size", "8", "64", "-b", "1", "-j", "0",
                                 "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"--crop-size 8 64 is too small for the segmentor's output stride 8: each side must be at least " \
           f"{MIN_CROP_SIDE}" in err and not os.listdir(tmp_path)


@pytest.mark.parametrize("entry", ["train_val", "train_seg", "train_video"])
def test_ctrl_c_during_valid_is_one_line_and_exit_130(entry, tmp_path, capsys, monkeypatch):
    import importlib
    module = importlib.import_module(entry)
    checkpoint = tmp_path / "ckpt.pth.tar"
    torch.save({"state_dict": {}}, checkpoint)

    def interrupted(args, ctx, log):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "validate_checkpoint", interrupted)
    status = module.cli_main(["--dataset", "fake", "--valid", "--check_path", str(checkpoint), "-j", "0"])
    err = capsys.readouterr().err
    assert status == 130 and err == f"{entry}.py: interrupted (Ctrl-C)\n", err


def test_block_argument_and_input_errors_are_config_errors():
    from lib import build_nonlocal
    with pytest.raises(ConfigError, match="affinity_path must be one of auto, dense, factorized, got 'sparse'"):
        build_nonlocal("snl", 64, 32, affinity_path="sparse")
    block = build_nonlocal("snl", 8, 4)
    for shape in ((0, 8, 4, 4), (1, 8, 0, 4)):
        with pytest.raises(ConfigError, match=r"SNL got an empty input \(shape"):
            block(torch.zeros(shape))


@pytest.mark.parametrize("kind", ["cgnl", "cc"])
def test_cgnl_and_cc_refuse_an_empty_input_in_one_line(kind):
    from lib import build_nonlocal
    block = build_nonlocal(kind, 8, 4)
    with pytest.raises(ConfigError, match=rf"{kind} block got an empty input \(shape \(1, 8, 0, 4\)\)"):
        block(torch.zeros(1, 8, 0, 4))
