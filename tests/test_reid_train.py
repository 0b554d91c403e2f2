"""train_reid.py end to end on generated data (the `fake` / `fakevideo` sets: 8 training identities, 4 queries,
18 gallery entries; ResNet-18 at 64 x 32, batch 16 = 4 identities x 4, 2 iterations per epoch): the outputs of a
run, an exact resume after kill -9 inside an epoch and after SIGTERM (exit 75), every query once under torchrun,
the --save-features round trip, the recipe, and train_snl.sh / configs."""
import json
import os
import re
import shlex
import subprocess
import sys
from argparse import Namespace

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT
from runs import records, run_script
from test_resume import event_scalars, one_thread  # noqa: F401  (one_thread: autouse fixture, one CPU thread)

import train_reid
from lib.engine.errors import PREEMPTED_STATUS
from lib.engine.reid.evaluation import METRIC_NAMES, evaluate

# --center-loss: the centres and their SGD state must come back on a resume too.
COMMON = ["--dataset", "fake", "-j", "0", "--center-loss", "5e-4"]
RUN = os.path.join("fake", "reid18", "snl")
LAST = "1-fake-r-18-w-1snl-block.pth.tar"
PROGRESS = re.compile(r"^Epoch \[\d/2\]\[\d/2\]  loss [\d.]+ \([\d.]+\)  id top-1 [\d.]+ \([\d.]+\)  lr \S+  "
                      r"[\d.]+ img/s  eta \d+:\d\d:\d\d", re.M)

# train_reid.py with a fault injected from outside: KILL_AT_BATCH=k SIGKILLs the process in its k-th training
# batch, SIGNAL_AT_BATCH=k sends it SIGTERM there (as a cluster would).
RUNNER = """
import os, signal, sys
sys.path.insert(0, {root!r})
import train_reid

at_batch = {{"SIGKILL": int(os.environ.get("KILL_AT_BATCH", "0")),
            "SIGTERM": int(os.environ.get("SIGNAL_AT_BATCH", "0"))}}
forward, calls = train_reid.reid_forward, [0]
def dying_forward(*args):
    calls[0] += 1
    for name, batch in at_batch.items():
        if calls[0] == batch:
            os.kill(os.getpid(), getattr(signal, name))
    return forward(*args)
train_reid.reid_forward = dying_forward
sys.exit(train_reid.cli_main(sys.argv[1:]))
"""


def rows(run_dir):
    return [{key: value for key, value in row.items() if key != "time"} for row in records(run_dir)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted 2-epoch run: every other run must reproduce it."""
    out = tmp_path_factory.mktemp("reid") / "out"
    result = run_script(str(out.parent), RUNNER, COMMON + ["--output-dir", out], 600)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(out=out, run_dir=out / RUN, stdout=result.stdout)


def assert_same_training_state(expected, got):
    """Weights, Adam's moments and step counts, the centres and their SGD state, bit for bit."""
    for key, value in expected["state_dict"].items():
        assert torch.equal(value, got["state_dict"][key]), key
    adam, adam_got = expected["optimizer"]["adam"]["state"], got["optimizer"]["adam"]["state"]
    assert adam.keys() == adam_got.keys() and adam
    for index, state in adam.items():
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(state[name], adam_got[index][name]), (index, name)
    assert torch.equal(expected["optimizer"]["criterion"]["center.centers"],
                       got["optimizer"]["criterion"]["center.centers"])
    assert expected["optimizer"]["center_sgd"] == got["optimizer"]["center_sgd"]


def assert_same_run(run_dir, expected_dir):
    assert_same_training_state(*(torch.load(folder / LAST, weights_only=True) for folder in (expected_dir, run_dir)))
    assert rows(run_dir) == rows(expected_dir)
    assert [step for step, _ in event_scalars(run_dir)["mAP"]] == [1, 2]


def test_a_run_writes_every_output_with_the_six_metrics_in_percent(straight):
    run_dir = straight["run_dir"]
    names = set(os.listdir(run_dir))
    assert {LAST, "model_best.pth.tar", "metrics.jsonl", "log_train.txt", "args.yaml"} <= names
    assert any(name.startswith("events.out.tfevents") for name in names)
    table = rows(run_dir)
    assert [row["epoch"] for row in table] == [1, 2]
    for row in table:
        assert all(0 <= row[name] <= 100 for name in METRIC_NAMES)
        assert row["rank1"] <= row["rank5"] <= row["rank10"] <= row["rank20"]
        assert (row["num_queries"], row["num_skipped"]) == (4, 0)
    with open(run_dir / "args.yaml") as f:
        args = yaml.safe_load(f)
    # What tools/retrieval.py and tools/compare_runs.py read.
    assert (args["task"], args["backbone"], args["img_size"], args["distance"]) == ("reid", "reid", [64, 32],
                                                                                    "euclidean")
    checkpoint = torch.load(run_dir / LAST, weights_only=True)
    assert checkpoint["args"]["task"] == "reid" and checkpoint["best_map"] == max(r["mAP"] for r in table)
    assert len(PROGRESS.findall(straight["stdout"])) == 4
    log = (run_dir / "log_train.txt").read_text()
    assert "Features [gallery]" in log and "=> done: final rank-1" in log


def test_compare_runs_and_retrieval_read_the_run(straight, tmp_path):
    """The re-ID table shows the run's final rank-1 / mAP as metrics.jsonl holds them; retrieval draws a query."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    table = subprocess.run([sys.executable, "tools/compare_runs.py", str(straight["out"]), "--csv",
                            str(tmp_path / "runs.csv")], cwd=ROOT, capture_output=True, text=True, env=env)
    assert table.returncode == 0, table.stderr
    final = rows(straight["run_dir"])[-1]
    assert "re-ID runs" in table.stdout and f"{final['mAP']:.2f}" in table.stdout
    picture = tmp_path / "q0.png"
    drawn = subprocess.run([sys.executable, "tools/retrieval.py", str(straight["run_dir"] / "model_best.pth.tar"),
                            "--query", "0", "--output", str(picture)], cwd=ROOT, capture_output=True, text=True,
                           env=env)
    assert drawn.returncode == 0 and picture.is_file(), drawn.stderr


def test_killed_inside_an_epoch_resumes_bit_for_bit(straight, tmp_path, capsys):
    """--save-every 1: killed -9 in epoch 2's second batch; --resume auto continues after its first batch and ends
    as the uninterrupted run (weights, Adam state, centres, metrics rows, one tensorboard point per epoch)."""
    argv = [str(a) for a in COMMON + ["--output-dir", tmp_path / "out", "--save-every", "1"]]
    killed = run_script(str(tmp_path), RUNNER, argv, 600, KILL_AT_BATCH="4")
    assert killed.returncode == -9, killed.stderr[-2000:]
    run_dir = tmp_path / "out" / RUN
    assert [name for name in os.listdir(run_dir) if ".iter" in name] == ["1-fake-r-18-w-1snl-block.iter1.pth.tar"]
    assert train_reid.cli_main(argv + ["--resume", "auto"]) == 0
    assert "1 epoch(s) and 1 iteration(s) of epoch 2 done" in capsys.readouterr().out
    assert_same_run(run_dir, straight["run_dir"])


@pytest.mark.parametrize("batch,where", [(3, "epoch 2, iteration 1"),
                                         (2, "the end of epoch 1, before its evaluation")])
def test_sigterm_checkpoints_exits_75_and_the_resume_is_exact(straight, tmp_path, capsys, batch, where):
    """SIGTERM inside an epoch: a mid-epoch checkpoint; in its last batch: the epoch, awaiting its evaluation
    (which the resumed run does first). Either way exit 75, one line, and an exact resume."""
    argv = [str(a) for a in COMMON + ["--output-dir", tmp_path / "out"]]
    stopped = run_script(str(tmp_path), RUNNER, argv, 600, SIGNAL_AT_BATCH=str(batch))
    assert stopped.returncode == PREEMPTED_STATUS, stopped.stderr[-2000:]
    run_dir = tmp_path / "out" / RUN
    assert re.fullmatch(f"train_reid.py: stopped by SIGTERM at {where}; checkpoint {re.escape(str(run_dir))}/"
                        r"\S+\.pth\.tar; continue with --resume auto\n", stopped.stderr), stopped.stderr
    assert train_reid.cli_main(argv + ["--resume", "auto"]) == 0
    assert_same_run(run_dir, straight["run_dir"])


def test_valid_save_features_round_trip(straight, tmp_path, capsys):
    """The .npz holds the features the evaluation ranked (the model's eval features of the query and gallery
    images, in order) and re-evaluating them with evaluate() gives the reported metrics."""
    best, npz = straight["run_dir"] / "model_best.pth.tar", tmp_path / "features.npz"
    args = train_reid.parse_reid_args(["--valid", "--check_path", str(best), "-j", "0", "--save-features", str(npz)])
    stats = train_reid.main(args)
    assert "=> wrote" in capsys.readouterr().out
    saved = np.load(npz)
    assert set(saved.files) == {"qf", "gf", "q_pids", "g_pids", "q_camids", "g_camids"}
    again = evaluate(*(torch.from_numpy(saved[key]) for key in ("qf", "gf")),
                     *(saved[key] for key in ("q_pids", "g_pids", "q_camids", "g_camids")))
    for name in METRIC_NAMES:
        assert again[name] * 100 == pytest.approx(stats[name])
    from lib.data.reid_sets import build_reid_datasets
    from models import build_model
    checkpoint = torch.load(best, weights_only=True)
    model = build_model(**checkpoint["model_args"])
    model.load_state_dict(checkpoint["state_dict"])
    _, query_set, gallery_set, _ = build_reid_datasets("fake", None, img_size=(64, 32))
    with torch.no_grad():
        qf = model.eval()(torch.stack([query_set[i][0] for i in range(len(query_set))]))
    assert np.allclose(saved["qf"], qf.numpy(), atol=1e-5)
    assert list(saved["q_pids"]) == query_set.pids and list(saved["g_camids"]) == gallery_set.camids


def test_two_processes_embed_every_item_once(straight, tmp_path):
    """torchrun, 2 gloo processes: each embeds its shard of the query and gallery sets; the gathered arrays are
    the single process's, in the same order, and the metrics count the 4 queries once."""
    single, double = tmp_path / "one.npz", tmp_path / "two.npz"
    best = str(straight["run_dir"] / "model_best.pth.tar")
    valid = ["--valid", "--check_path", best, "-j", "0"]
    assert train_reid.cli_main(valid + ["--save-features", str(single)]) == 0
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             os.path.join(ROOT, "train_reid.py"), *valid, "--save-features", str(double)],
                            capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = np.load(single), np.load(double)
    assert len(two["qf"]) == 4 and len(two["gf"]) == 18
    for key in one.files:
        assert np.allclose(one[key], two[key], atol=1e-5), key
    assert "(4 queries, 0 without a match skipped)" in result.stdout


def test_two_processes_train_with_the_center_loss_and_write_one_set_of_outputs(tmp_path):
    """torchrun training: DDP over (logits, feature), the centres' gradients averaged; rank 0 alone writes; the
    metrics row counts the 4 queries once."""
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             os.path.join(ROOT, "train_reid.py"), *COMMON, "--epochs", "1", "--output-dir",
                             str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / RUN
    (row,) = rows(run_dir)
    assert (row["num_queries"], row["num_skipped"]) == (4, 0)
    assert torch.load(run_dir / "0-fake-r-18-w-1snl-block.pth.tar", weights_only=True)["world_size"] == 2
    assert result.stdout.count("=> done: final rank-1") == 1


def test_a_checkpoint_of_another_task_is_refused_in_one_line(tmp_path, capsys):
    other = tmp_path / "classifier.pth.tar"
    torch.save({"state_dict": {}, "model_args": {"backbone": "preresnet", "arch": 20}, "epoch": 1,
                "args": {"dataset": "cifar10"}}, other)
    assert train_reid.cli_main(["--valid", "--check_path", str(other)]) == 2
    assert capsys.readouterr().err == (f"train_reid.py: error: {other} is a classification checkpoint, not a reid "
                                       f"one: use it with train_val.py\n")


def test_fakevideo_smoke_run_with_two_frames(tmp_path, capsys):
    argv = ["--dataset", "fakevideo", "--seq-len", "2", "--epochs", "1", "-j", "0", "--output-dir", str(tmp_path)]
    assert train_reid.cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "tracklets/s" in out and "clips of 2 frames, test sampling dense" in out
    run_dir = tmp_path / "fakevideo" / "reid_video18" / "snl"
    (row,) = rows(run_dir)
    assert row["num_queries"] == 4 and 0 <= row["mAP"] <= 100
    with open(run_dir / "args.yaml") as f:
        args = yaml.safe_load(f)
    assert (args["backbone"], args["seq_len"], args["test_sampling"]) == ("reid_video", 2, "dense")


def resolved(argv):
    return train_reid.resolve(train_reid.parse_reid_args(argv))


def test_recipes_fill_unset_flags_and_flags_win():
    image, video = resolved(["--dataset", "market1501"]), resolved(["--dataset", "mars"])
    assert (image.lr, image.weight_decay, image.batch_size, image.num_instances, image.img_size, image.epochs,
            image.lr_steps, image.warmup_epochs, image.pretrained) == (3.5e-4, 5e-4, 64, 4, [256, 128], 120,
                                                                       [40, 70], 10, True)
    assert (video.lr, video.batch_size, video.seq_len, video.img_size, video.backbone) == \
        (3e-4, 32, 4, [224, 112], "reid_video")
    assert resolved(["--dataset", "mars", "--lr", "1e-4", "--seq-len", "8"]).lr == 1e-4
    # BoT's warm-up starts at 1% of the lr (gamma^2 with two steps) and reaches the lr; then the steps.
    schedule = train_reid.lr_schedule(image, Namespace(world_size=1))
    assert schedule.lr_at(0) == pytest.approx(3.5e-6) and schedule.lr_at(9) == pytest.approx(3.5e-4)
    assert schedule.lr_at(40) == pytest.approx(3.5e-5) and schedule.lr_at(70) == pytest.approx(3.5e-6)


@pytest.mark.parametrize("argv,message", [
    (["-b", "18"], "must be a multiple of --num-instances 4"),
    (["--split", "all"], "--split all: only ilidsvid and prid2011 have ten splits"),
    (["--center-loss", "5e-4", "--amp", "fp16"], "--center-loss with --amp fp16 is not supported"),
    (["--backbone", "resnet3d"], "--backbone resnet3d is for video re-ID sets"),
    (["--save-features", "x.npz"], "--save-features goes with --valid"),
])
def test_bad_flags_are_one_line(argv, message, capsys):
    assert train_reid.cli_main(["--dataset", "fake"] + argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_split_all_runs_ten_splits_in_their_folders_and_summarizes(tmp_path, monkeypatch, capsys):
    """--split all: ten runs (split0..split9 sub-folders), then the mean and std of their final metrics."""
    seen = []

    def fake_run(task, args, launcher_pid):
        seen.append((args.split, task.task_run_folder(args)))
        return {name: float(args.split) for name in METRIC_NAMES}
    monkeypatch.setattr(train_reid.lifecycle, "main", fake_run)
    args = train_reid.parse_reid_args(["--dataset", "ilidsvid", "--split", "all", "--output-dir", str(tmp_path)])
    summary = train_reid.main(args)
    base = os.path.join(str(tmp_path), "ilidsvid", "reid_video50", "snl")
    assert seen == [(k, os.path.join(base, f"split{k}")) for k in range(10)]
    with open(os.path.join(base, "splits_summary.json")) as f:
        assert json.load(f) == summary
    assert summary["mAP"]["mean"] == pytest.approx(4.5) and summary["mAP"]["std"] == pytest.approx(np.std(
        range(10), ddof=1))
    assert "=> ten splits: rank1 4.50 ±" in capsys.readouterr().out


@pytest.mark.parametrize("experiment", ["market1501", "mars"])
def test_train_snl_and_the_config_are_the_same_experiment(experiment):
    out = subprocess.run(["sh", os.path.join(ROOT, "train_snl.sh"), experiment], capture_output=True, text=True,
                         env=dict(os.environ, DRY_RUN="1", DATA_ROOT="/data/root"), check=True).stdout
    (command,) = [shlex.split(line) for line in out.splitlines()]
    assert command[:2] == ["python3", "train_reid.py"]
    from_script = vars(resolved(command[2:]))
    from_config = vars(resolved(["--config", os.path.join(ROOT, "configs", f"{experiment}_reid50_snl.yaml"),
                                 "--data-dir", "/data/root"]))
    ignored = {"explicit", "config"}
    assert {k: v for k, v in from_script.items() if k not in ignored} == \
        {k: v for k, v in from_config.items() if k not in ignored}


def test_split_all_on_an_ilidsvid_tree_trains_each_split_and_averages_their_final_metrics(tmp_path, capsys):
    """A generated iLIDS-VID release (8 persons, its split file): ten one-epoch runs, split0..split9, and the
    summary's means are those of the ten final metrics rows."""
    from test_reid_data import ilids_tree
    ilids_tree(str(tmp_path / "data"), persons=8)
    argv = ["--dataset", "ilidsvid", "--data-dir", str(tmp_path / "data"), "--split", "all", "--arch", "18",
            "--pretrained", "False", "--img-size", "32", "16", "--seq-len", "2", "-b", "8", "--num-instances", "2",
            "--epochs", "1", "--warmup-epochs", "0", "--lr-steps", "1", "-j", "0", "--output-dir", str(tmp_path)]
    assert train_reid.cli_main(argv) == 0
    base = tmp_path / "ilidsvid" / "reid_video18" / "snl"
    finals = [rows(base / f"split{k}")[-1] for k in range(10)]
    with open(base / "splits_summary.json") as f:
        summary = json.load(f)
    for name in METRIC_NAMES:
        assert summary[name]["mean"] == pytest.approx(np.mean([row[name] for row in finals]))
    assert all(row["num_queries"] == 4 for row in finals)
    assert "=> ten splits: rank1" in capsys.readouterr().out
