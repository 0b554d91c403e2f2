"""tools/compare_runs.py on small run folders written here (args.yaml + metrics.jsonl as the entry points write
them): one experiment per group, duplicates, torn files, one table per task, output paths, a readable plot."""
import csv
import json
import statistics

import pytest
import yaml

from tools import compare_runs

# The args.yaml of `train_val.py --dataset fake --input-size 8 --epochs 2 -b 64` (resolved values).
CLASSIFICATION = dict(
    amp="off", arch="20", backbone="preresnet", batch_size=64, channels_last=False, check_path="", checkpoints="snl",
    compile=False, config=None, data_dir="./data", dataset="fake", debug=False, deterministic=False, device="auto",
    div=2, download=True, epochs=2, eval_freq=1, explicit=["batch_size"], hflip=0.5, input_size=8, is_norm=None,
    is_sys=None, isresume=False, keep_checkpoints=1, lr=0.1, lr_gamma=0.1, lr_scale="none", lr_steps=[160, 260],
    momentum=0.9, nl_layer=["1"], nl_nums=1, nl_type="snl", num_gpu=1, order=None, output_dir="save_model",
    pretrained=False, print_freq=100, recipe="cifar", resume="", resumename="", seed=1, stage_nums=1, sync_bn=False,
    valid=False, warmup=False, warmup_epochs=1, weight_decay=0.0001, workers=0)
# train_seg.py's (lib/engine/segmentation/cli.py) and train_video.py's (the classification keys plus the clip settings).
SEGMENTATION = dict(
    amp="off", arch="50", aux_weight=0.4, backbone="resnet", batch_size=2, cat_max_ratio=0.75, channels_last=False,
    check_path="", checkpoints="snl", compile=False, config=None, crop_size=[512, 1024], data_dir="./data",
    dataset="cityscapes", deterministic=False, device="auto", div=2, eval_every=4000, hflip=0.5,
    img_scale=[2048, 1024], is_norm=None, is_sys=None, iters=40000, keep_checkpoints=1, lr=0.01, min_lr=0.0001,
    momentum=0.9, nl_type="snl", output_dir="save_model", photometric=True, power=0.9, pretrained=True,
    print_freq=50, ratio_range=[0.5, 2.0], resume="", seed=1, stage_nums=1, sync_bn=False, valid=False,
    weight_decay=0.0005, workers=4)
VIDEO = dict(CLASSIFICATION, dataset="ucf101", backbone="r3d", arch="18", input_size=None, nl_layer=["3"],
             clip_len=8, frame_step=2, frame_size=112, test_clips=10, split=1, ft_begin_index=0, epochs=3)
BASES = {"classification": CLASSIFICATION, "segmentation": SEGMENTATION, "video": VIDEO}


def write_run(root, name, task="classification", values=(50.0, 60.0), processes=None, **changes):
    """A run folder: args.yaml (the task's settings with `changes`) and one metrics.jsonl row per value."""
    folder = root / name
    folder.mkdir(parents=True)
    args = dict(BASES[task], **changes)
    (folder / "args.yaml").write_text(yaml.safe_dump(args))
    rows = []
    for k, value in enumerate(values, 1):
        if task == "segmentation":
            rows.append({"iteration": 4000 * k, "mIoU": value, "aAcc": 90.0, "time": 100.0})
        elif task == "video":
            rows.append({"epoch": k, "clip_top1": value, "clip_top5": 90.0, "loss": 1.0, "time": 3.0,
                         **({"video_top1": value + 5, "video_top5": 95.0} if k in (2, len(values)) else {})})
        else:
            rows.append({"epoch": k, "top1": value, "top5": 90.0, "loss": 1.0, "time": 2.0})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    if processes:
        (folder / "log_train.txt").write_text(f"=> batch size {args['batch_size']} per process x {processes} "
                                              f"process(es) = global batch {args['batch_size'] * processes}\n")
    return folder


def compare(argv, capsys):
    status = compare_runs.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def table_lines(out, title):
    """The data lines of the markdown table under the title starting with `title`."""
    lines = out.splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith(title))
    rows = []
    for line in lines[start + 4:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return lines[start + 2], rows


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --- item 1: a group is one experiment --------------------------------------------------------------------------

def test_runs_trained_differently_are_never_averaged(tmp_path, capsys):
    """The case found by hand: 1-, 3- and 4-epoch runs at batch 32, 64 and 128 were averaged into one row."""
    for k, (epochs, batch) in enumerate([(1, 32), (3, 64), (4, 128)]):
        write_run(tmp_path, f"run{k}", epochs=epochs, batch_size=batch, values=[10.0 * (k + 1)] * epochs)
    write_run(tmp_path, "run0_seed2", epochs=1, batch_size=32, seed=2, values=[20.0])
    status, out, err = compare([tmp_path, "--csv", tmp_path / "out.csv"], capsys)
    assert status == 0, err
    header, rows = table_lines(out, "classification")
    assert len(rows) == 3 and "differs in" in header
    by_seeds = {row["seeds"]: row for row in read_csv(tmp_path / "out.csv")}
    assert set(by_seeds) == {"1 2", "1"}
    pair = by_seeds["1 2"]
    assert float(pair["final_mean"]) == pytest.approx(15.0) and float(pair["final_std"]) == pytest.approx(
        statistics.stdev([10.0, 20.0]))
    assert "batch_size 32 x ? process(es), epochs 1" in pair["differs_in"]
    assert "note: groups differ in settings other than the model: batch_size, epochs" in out


# Every setting that changes the experiment, with another value than CLASSIFICATION's.
CHANGING = [("epochs", 3), ("batch_size", 32), ("lr", 0.05), ("lr_steps", [100, 200]), ("lr_gamma", 0.2),
            ("lr_scale", "linear"), ("warmup_epochs", 0), ("weight_decay", 0.0005), ("momentum", 0.8),
            ("hflip", 0.0), ("amp", "bf16"), ("recipe", "imagenet"), ("input_size", 16), ("dataset", "cifar10"),
            ("arch", "56"), ("backbone", "resnet"), ("nl_type", "nl"), ("nl_nums", 2), ("nl_layer", ["2"]),
            ("stage_nums", 2), ("div", 4), ("is_sys", False), ("is_norm", False), ("order", 3),
            ("pretrained", True), ("sync_bn", True), ("a_future_flag", 1)]


@pytest.mark.parametrize("key, value", CHANGING, ids=[key for key, _ in CHANGING])
def test_every_setting_that_changes_the_experiment_splits_the_group(tmp_path, capsys, key, value):
    write_run(tmp_path, "a", seed=1)
    write_run(tmp_path, "b", seed=2, **{key: value})
    status, out, err = compare([tmp_path, "--csv", tmp_path / "out.csv"], capsys)
    assert status == 0, err
    rows = read_csv(tmp_path / "out.csv")
    assert len(rows) == 2 and all(row["runs"] == "1" for row in rows)


def test_processes_count_in_the_batch(tmp_path, capsys):
    """64 per process on 1 process and on 2 processes are different experiments (the log says how many)."""
    write_run(tmp_path, "one", seed=1, processes=1)
    write_run(tmp_path, "two", seed=2, processes=2)
    status, out, err = compare([tmp_path, "--csv", tmp_path / "out.csv"], capsys)
    assert status == 0, err
    assert sorted(row["differs_in"] for row in read_csv(tmp_path / "out.csv")) == [
        "batch_size 64 x 1 process(es)", "batch_size 64 x 2 process(es)"]


def test_settings_that_do_not_change_the_experiment_group_together(tmp_path, capsys):
    write_run(tmp_path, "a", seed=1, is_sys=None, is_norm=None)
    # SNL's defaults spelled out; another folder, loader, log and evaluation frequency, device, compile ...
    write_run(tmp_path, "b", seed=2, is_sys=True, is_norm=True, checkpoints="other", output_dir="elsewhere",
              workers=8, print_freq=10, eval_freq=5, keep_checkpoints=0, device="cuda", compile=True,
              channels_last=True, deterministic=True, data_dir="/data", explicit=[], resume="auto")
    status, out, err = compare([tmp_path, "--csv", tmp_path / "out.csv"], capsys)
    assert status == 0, err
    (row,) = read_csv(tmp_path / "out.csv")
    assert row["seeds"] == "1 2" and row["differs_in"] == "-"
    assert "differs in" not in out


def test_same_seed_twice_is_a_duplicate_not_a_sample(tmp_path, capsys):
    write_run(tmp_path, "a", seed=1, values=[50.0, 60.0])
    write_run(tmp_path, "a_again", seed=1, values=[50.0, 62.0])
    write_run(tmp_path, "b", seed=2, values=[50.0, 70.0])
    status, out, err = compare([tmp_path, "--csv", tmp_path / "out.csv"], capsys)
    assert status == 0, err
    (row,) = read_csv(tmp_path / "out.csv")
    assert row["runs"] == "2" and row["seeds"] == "1 2" and row["duplicates"] == str(tmp_path / "a_again")
    assert float(row["final_mean"]) == pytest.approx(65.0)  # (60 + 70) / 2: the duplicate is not counted
    _, (line,) = table_lines(out, "classification")
    assert "1, 2, 1 (duplicate, not counted)" in line
    assert f"note: {tmp_path / 'a_again'} has seed 1, as {tmp_path / 'a'} in the same experiment" in out


def test_delta_is_to_the_plain_model_of_the_same_experiment(tmp_path, capsys):
    write_run(tmp_path, "snl", values=[50.0, 60.0])
    write_run(tmp_path, "plain", nl_type="none", values=[50.0, 55.0])
    write_run(tmp_path, "snl_long", epochs=3, values=[50.0, 60.0, 70.0])  # no plain run of 3 epochs
    status, out, err = compare([tmp_path, "--csv", tmp_path / "out.csv"], capsys)
    assert status == 0, err
    deltas = {(row["block"], row["differs_in"]): row["delta_final"] for row in read_csv(tmp_path / "out.csv")}
    assert deltas == {("snl", "epochs 2"): "5.0", ("none", "epochs 2"): "0.0", ("snl", "epochs 3"): ""}


# --- item 2: keep what can be kept ------------------------------------------------------------------------------

def test_torn_last_line_drops_the_line_and_marks_the_run_unfinished(tmp_path, capsys):
    folder = write_run(tmp_path, "killed", values=[50.0, 60.0], epochs=3)
    with open(folder / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "top1": 6')  # killed while writing
    status, out, err = compare([tmp_path, "--csv", tmp_path / "out.csv"], capsys)
    assert status == 0, err
    (row,) = read_csv(tmp_path / "out.csv")
    assert float(row["final_mean"]) == 60.0 and row["unfinished"] == "1"
    assert "1 (unfinished: torn last line, 2/3)" in out
    assert f"note: {folder} is unfinished: its metrics.jsonl ends in a torn line (dropped) at epoch 2 of 3" in out


def test_a_damaged_line_inside_the_file_skips_the_run_with_a_note(tmp_path, capsys):
    write_run(tmp_path, "good")
    bad = write_run(tmp_path, "bad", seed=2)
    lines = (bad / "metrics.jsonl").read_text().splitlines()
    (bad / "metrics.jsonl").write_text("\n".join(["garbage", *lines]) + "\n")
    status, out, err = compare([tmp_path], capsys)
    assert status == 0, err
    assert f"note: skipped {bad}: {bad / 'metrics.jsonl'} line 1 is not a metrics record" in out


def test_each_task_gets_its_own_table(tmp_path, capsys):
    write_run(tmp_path, "cls", values=[50.0, 60.0])
    for seed, values in ((1, [40.0, 50.0, 45.0]), (2, [42.0, 48.0, 52.0])):
        write_run(tmp_path, f"seg{seed}", task="segmentation", seed=seed, iters=12000, values=values)
        write_run(tmp_path, f"video{seed}", task="video", seed=seed, values=[v + 10 for v in values])
    status, out, err = compare([tmp_path, "--csv", tmp_path / "out.csv"], capsys)
    assert status == 0, err
    assert "not a metrics record" not in out
    header, (row,) = table_lines(out, "segmentation runs")
    assert "final mIoU" in header and "best mIoU" in header and "s / eval" in header
    assert f"{statistics.fmean([45.0, 52.0]):.2f} ± {statistics.stdev([45.0, 52.0]):.2f}" in row  # final
    assert f"{statistics.fmean([50.0, 52.0]):.2f} ± {statistics.stdev([50.0, 52.0]):.2f}" in row  # best
    assert "crop 512x1024" in row
    header, (row,) = table_lines(out, "video runs")
    assert all(h in header for h in ("final clip top-1", "best clip top-1", "final video top-1", "best video top-1"))
    table = {(r["task"], r["metric"]): r for r in read_csv(tmp_path / "out.csv")}
    clip, video = table["video", "clip_top1"], table["video", "video_top1"]
    assert float(clip["final_mean"]) == pytest.approx(statistics.fmean([55.0, 62.0]))
    assert float(clip["best_mean"]) == pytest.approx(statistics.fmean([60.0, 62.0]))
    # video top-1 is written where the multi-clip test ran (epochs 2 and 3 here): +5 over that epoch's clip top-1
    assert float(video["final_mean"]) == pytest.approx(statistics.fmean([60.0, 67.0]))
    assert video["best_mean"] == ""  # measured on the test split only: a best of it would select on that split
    assert table["classification", "top1"]["final_mean"] == "60.0"


def test_a_video_run_validated_on_its_test_split_shows_no_best(tmp_path, capsys):
    write_run(tmp_path, "video", task="video", validation="test", values=[50.0, 60.0, 55.0])
    status, out, err = compare([tmp_path, "--csv", tmp_path / "out.csv"], capsys)
    assert status == 0, err
    table = {(r["task"], r["metric"]): r for r in read_csv(tmp_path / "out.csv")}
    assert float(table["video", "clip_top1"]["final_mean"]) == 55.0
    assert table["video", "clip_top1"]["best_mean"] == "" and table["video", "video_top1"]["best_mean"] == ""


@pytest.mark.parametrize("flag", ["--csv", "--plot"])
def test_output_to_a_folder_is_one_line_and_nothing_is_computed(tmp_path, capsys, monkeypatch, flag):
    write_run(tmp_path, "a")
    monkeypatch.setattr(compare_runs, "find_run_folders", lambda paths: pytest.fail("computed before checking"))
    status, out, err = compare([tmp_path, flag, tmp_path], capsys)
    assert status == 2 and not out
    assert err.count("\n") == 1 and f"{flag} {tmp_path} is a folder" in err


def test_plot_with_an_unknown_format_is_one_line(tmp_path, capsys):
    write_run(tmp_path, "a")
    status, _, err = compare([tmp_path, "--plot", tmp_path / "curves.txt"], capsys)
    assert status == 2 and err.count("\n") == 1 and ".png" in err


def test_outputs_into_missing_folders_create_them(tmp_path, capsys):
    write_run(tmp_path / "runs", "a")
    csv_path, png = tmp_path / "new" / "deep" / "runs.csv", tmp_path / "pictures" / "curves.png"
    status, out, err = compare([tmp_path / "runs", "--csv", csv_path, "--plot", png], capsys)
    assert status == 0, err
    assert csv_path.is_file() and png.stat().st_size > 0 and f"wrote {png}" in out


def test_twelve_groups_stay_readable(tmp_path, capsys):
    for k in range(12):
        write_run(tmp_path, f"run{k}", lr=0.01 * (k + 1), values=[10.0 + k, 20.0 + k, 30.0 + k], epochs=3)
    notes = []
    runs = [compare_runs.read_run(folder, notes) for folder in compare_runs.find_run_folders([tmp_path])]
    tables, _ = compare_runs.summarize(runs)
    fig = compare_runs.figure(tables)
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert len(lines) == 12
    assert len({(line.get_color(), line.get_linestyle()) for line in lines}) == 12  # no two alike
    assert len({line.get_color() for line in lines}) >= 10
    fig.canvas.draw()
    legend = ax.get_legend()
    assert legend.get_window_extent().x0 >= ax.get_window_extent().x1  # outside the axes, on the right
    assert len(legend.get_texts()) == 12 and "lr 0.05" in " ".join(t.get_text() for t in legend.get_texts())
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_a_setting_changed_on_resume_makes_another_experiment(tmp_path, capsys):
    write_run(tmp_path, "a", seed=1, epochs=3, values=[50.0, 60.0, 70.0])
    resumed = write_run(tmp_path, "b", seed=2, epochs=2, values=[50.0, 60.0, 70.0])
    # resumed after epoch 2 with more epochs (meant to change) and another lr (a different experiment)
    (resumed / "args_resume_2.yaml").write_text(yaml.safe_dump(dict(CLASSIFICATION, seed=2, epochs=3, lr=0.05,
                                                                    workers=4)))
    status, out, err = compare([tmp_path, "--csv", tmp_path / "out.csv"], capsys)
    assert status == 0, err
    rows = read_csv(tmp_path / "out.csv")
    assert len(rows) == 2
    assert sorted(row["differs_in"] for row in rows) == ["changed_on_resume lr 0.1 -> 0.05 at 2",
                                                         "changed_on_resume none"]
    (more_epochs,) = [row for row in rows if row["seeds"] == "2"]
    assert more_epochs["unfinished"] == "0"  # 3 epochs were planned by the resume, and 3 were evaluated


def test_differs_in_compares_rows_of_the_same_dataset_and_model(tmp_path, capsys):
    write_run(tmp_path, "cifar", dataset="cifar10", lr=0.1)
    write_run(tmp_path, "other", dataset="cifar100", lr=0.05)  # another dataset: its lr is no surprise
    write_run(tmp_path, "fake3", epochs=3, values=[1.0, 2.0, 3.0])
    write_run(tmp_path, "fake2", epochs=2)
    status, out, err = compare([tmp_path, "--csv", tmp_path / "out.csv"], capsys)
    assert status == 0, err
    differs = {row["dataset"] + row["differs_in"] for row in read_csv(tmp_path / "out.csv")}
    assert differs == {"cifar10-", "cifar100-", "fakeepochs 2", "fakeepochs 3"}
    assert "note: groups differ in settings other than the model: epochs (" in out
