"""tools/compare_runs.py's re-ID and detection tables: runs written here as train_reid.py / train_det.py write
them (args.yaml with `task`, metrics.jsonl rows with their metric keys), over seeds, final and best apart."""
import json
import statistics

import pytest
import yaml
from test_compare_runs import compare, read_csv, table_lines

# The settings of the runs (what train_reid.py / train_det.py's args.yaml hold that matters here).
REID = dict(task="reid", dataset="market1501", backbone="reid", arch="50", img_size=[256, 128], nl_type="snl",
            nl_nums=5, div=2, epochs=3, batch_size=64, lr=0.00035, seed=1, data_dir="data", workers=4)
DETECTION = dict(task="detection", dataset="coco", model="maskrcnn", backbone="resnet", arch="50", min_size=800,
                 max_size=1333, nl_type="snl", nl_nums=1, div=2, epochs=3, batch_size=2, lr=0.02, seed=1)


def write_task_run(root, name, base, rows, **changes):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "args.yaml").write_text(yaml.safe_dump(dict(base, **changes)))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(dict(epoch=k, time=5.0, **row)) + "\n"
                                                  for k, row in enumerate(rows, 1)))
    return folder


def reid_rows(rank1s, maps):
    return [dict(rank1=r, rank5=r + 5, rank10=r + 7, rank20=r + 9, mAP=m, mINP=m / 2) for r, m in zip(rank1s, maps)]


def det_rows(boxes, masks=None):
    return [dict(bbox_AP=b, bbox_AP50=b + 20, **({} if masks is None else dict(segm_AP=m, segm_AP50=m + 20)))
            for b, m in zip(boxes, masks or boxes)]


def pm(values):
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def test_reid_table_over_seeds_with_best_by_map(tmp_path, capsys):
    # Seed 1: the best mAP (epoch 2) is not the best rank-1 (epoch 3): best reports epoch 2's rank-1.
    write_task_run(tmp_path, "snl1", REID, reid_rows([80.0, 85.0, 88.0], [60.0, 70.0, 65.0]), seed=1)
    write_task_run(tmp_path, "snl2", REID, reid_rows([82.0, 86.0, 87.0], [62.0, 66.0, 68.0]), seed=2)
    write_task_run(tmp_path, "plain1", REID, reid_rows([80.0, 84.0, 86.0], [60.0, 64.0, 66.0]), nl_type=None)
    status, out, err = compare([tmp_path, "--csv", tmp_path / "out.csv"], capsys)
    assert status == 0, err
    header, rows = table_lines(out, "re-ID runs")
    assert "final rank-1" in header and "best rank-1" in header and "final mAP" in header and "best mAP" in header
    assert "classification" not in out and len(rows) == 2
    plain, snl = rows  # plain first
    assert "plain" in plain and "5 x snl" in snl and "256x128" in snl and "reid-50" in snl
    assert "1, 2" in snl
    assert pm([88.0, 87.0]) in snl and pm([65.0, 68.0]) in snl  # final rank-1, final mAP
    assert pm([85.0, 87.0]) in snl and pm([70.0, 68.0]) in snl  # best: epoch 2 of seed 1, epoch 3 of seed 2
    by_metric = {row["metric"]: row for row in read_csv(tmp_path / "out.csv") if row["block"] == "snl"}
    assert set(by_metric) == {"rank1", "mAP"}
    assert float(by_metric["rank1"]["best_mean"]) == pytest.approx(86.0)
    assert float(by_metric["mAP"]["delta_final"]) == pytest.approx(statistics.fmean([65.0, 68.0]) - 66.0)
    assert float(by_metric["rank1"]["delta_best"]) == pytest.approx(86.0 - 86.0)  # plain's best mAP is epoch 3


def test_detection_table_box_and_mask_ap(tmp_path, capsys):
    write_task_run(tmp_path, "snl1", DETECTION, det_rows([30.0, 35.0, 34.0], [28.0, 31.0, 32.0]), seed=1)
    write_task_run(tmp_path, "snl2", DETECTION, det_rows([31.0, 33.0, 36.0], [29.0, 30.0, 33.0]), seed=2)
    write_task_run(tmp_path, "faster", DETECTION, det_rows([30.0, 32.0, 33.0]), model="fasterrcnn")
    write_task_run(tmp_path, "reid", REID, reid_rows([80.0], [60.0]), epochs=1)
    status, out, err = compare([tmp_path, "--csv", tmp_path / "out.csv"], capsys)
    assert status == 0, err
    header, rows = table_lines(out, "detection runs")
    assert "final box AP" in header and "best mask AP" in header
    assert len(table_lines(out, "re-ID runs")[1]) == 1  # one table per task
    (faster,) = [row for row in rows if "fasterrcnn" in row]
    (mask,) = [row for row in rows if "maskrcnn resnet-50-FPN" in row]
    assert "800-1333" in mask and "1, 2" in mask
    assert pm([34.0, 36.0]) in mask and pm([32.0, 33.0]) in mask  # final box AP, final mask AP
    assert pm([35.0, 36.0]) in mask and pm([31.0, 33.0]) in mask  # best by box AP: epoch 2 / epoch 3
    assert faster.count(" - ") >= 2  # a box-only model has no mask AP
    tasks = {row["task"] for row in read_csv(tmp_path / "out.csv")}
    assert tasks == {"reid", "detection"}


def test_reid_settings_split_the_group(tmp_path, capsys):
    write_task_run(tmp_path, "a", REID, reid_rows([80.0], [60.0]), epochs=1, seed=1)
    write_task_run(tmp_path, "b", REID, reid_rows([81.0], [61.0]), epochs=1, seed=2, img_size=[384, 128])
    write_task_run(tmp_path, "c", REID, reid_rows([82.0], [62.0]), epochs=1, seed=3, data_dir="elsewhere")
    status, out, err = compare([tmp_path, "--csv", tmp_path / "out.csv"], capsys)
    assert status == 0, err
    seeds = sorted(row["seeds"] for row in read_csv(tmp_path / "out.csv") if row["metric"] == "mAP")
    assert seeds == ["1 3", "2"]  # another image size is another experiment; another data folder is not


def test_a_reid_plot_has_a_panel_per_metric(tmp_path, capsys):
    write_task_run(tmp_path, "a", REID, reid_rows([80.0, 85.0], [60.0, 62.0]), epochs=2)
    write_task_run(tmp_path, "d", DETECTION, det_rows([30.0, 31.0]), epochs=2)
    status, out, err = compare([tmp_path, "--plot", tmp_path / "curves.png"], capsys)
    assert status == 0, err
    assert (tmp_path / "curves.png").stat().st_size > 0
