#!/usr/bin/env python3
"""Compare training runs: every run folder under the given folders, grouped by experiment, as one table.

    python tools/compare_runs.py save_model                        # markdown table on stdout
    python tools/compare_runs.py save_model --csv runs.csv --plot top1.png
    python tools/compare_runs.py save_model/cifar10/20/snl_seed67 save_model/cifar10/20/snl_seed68

A run folder is one that holds args.yaml (README, "What a run writes"); its metrics.jsonl gives the evaluations.
Runs are grouped by dataset, backbone, arch, input size, block type, number and place of the blocks (nl_nums,
nl_layer), stage_nums, div, the affinity flags (is_sys, is_norm; unset = the block's default, resolved here) and
order (where the run has one); the seeds of a group are its repetitions. Per group: seeds, parameters and GFLOPs
per image (the model built on the meta device, FLOPs counted as tools/complexity.py does), final top-1 (the last
evaluation) and best top-1 (the highest over training: selected on the test set for CIFAR) as mean +- the sample
standard deviation over seeds (n - 1 in the denominator; none for one seed), the difference of the means to the
plain backbone's group (same dataset, backbone, arch and input size, no block), and the mean wall time of an
evaluated epoch (training + evaluation). A run whose last evaluation is before its last epoch (args.yaml, or
the newest args_resume_*.yaml) is marked unfinished and counted with what it has; a run without metrics is
skipped with a note.
"""
import argparse
import csv
import glob
import json
import os
import re
import statistics
import sys

import torch
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib import NONLOCAL_BLOCKS  # noqa: E402
from lib.engine.cli import OneLineParser  # noqa: E402
from lib.errors import ConfigError  # noqa: E402
from lib.stage import NonlocalStage  # noqa: E402
from models import build_model  # noqa: E402
from tools.complexity import count  # noqa: E402

NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000, "fake": 10}
INPUT_SIZES = {"cifar10": 32, "cifar100": 32, "fake": 32, "imagenet": 224, "imagefolder": 224}
KEY_FIELDS = ("dataset", "backbone", "arch", "input_size", "block", "nl_nums", "nl_layer", "stage_nums", "div",
              "is_sys", "is_norm", "order")
NOT_APPLICABLE = "-"


def find_run_folders(paths):
    """Every folder holding args.yaml at or below the given paths, sorted."""
    found = set()
    for path in paths:
        if not os.path.isdir(path):
            raise ConfigError(f"no such folder: {path}")
        for folder, _, names in os.walk(path):
            if "args.yaml" in names:
                found.add(folder)
    return sorted(found)


def read_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def planned_epochs(folder, args):
    """--epochs of the run's latest start: the newest args_resume_<epoch>.yaml, else args.yaml."""
    resumes = []
    for path in glob.glob(os.path.join(folder, "args_resume_*.yaml")):
        match = re.search(r"args_resume_(\d+)\.yaml$", path)
        if match:
            resumes.append((int(match.group(1)), path))
    return read_yaml(max(resumes)[1]).get("epochs", args.get("epochs")) if resumes else args.get("epochs")


def read_metrics(path):
    """{epoch: row} of metrics.jsonl; a later row of the same epoch (a resumed run's) replaces the earlier one."""
    rows = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                    row["top1"] = float(row["top1"])
                    rows[int(row["epoch"])] = row
                except (ValueError, KeyError, TypeError):
                    raise ConfigError(f"{path} line {number} is not a metrics record: {line.strip()[:60]!r}") from None
    return rows


def affinity_flags(nl_type, is_sys, is_norm):
    """(is_sys, is_norm) as the block builds them (unset = its default); not applicable for cgnl, cc."""
    cls = NONLOCAL_BLOCKS.get(nl_type)
    if cls is None or not issubclass(cls, NonlocalStage):
        return NOT_APPLICABLE, NOT_APPLICABLE
    return (cls.default_sys if is_sys is None else bool(is_sys)), (cls.default_norm if is_norm is None
                                                                    else bool(is_norm))


def group_key(args):
    """The experiment a run belongs to (KEY_FIELDS); the plain backbone has no block fields."""
    dataset, backbone = args.get("dataset"), args.get("backbone")
    input_size = args.get("input_size") or INPUT_SIZES.get(dataset, NOT_APPLICABLE)
    nl_type = args.get("nl_type")
    if nl_type in (None, "none", "base") or not args.get("nl_nums"):
        return (dataset, backbone, str(args.get("arch")), input_size, "none", 0) + (NOT_APPLICABLE,) * 6
    is_sys, is_norm = affinity_flags(nl_type, args.get("is_sys"), args.get("is_norm"))
    nl_layer = ",".join(sorted(str(s) for s in args.get("nl_layer") or ["1"])) if backbone == "preresnet" else "-"
    order = args.get("order")
    return (dataset, backbone, str(args.get("arch")), input_size, nl_type, args.get("nl_nums"), nl_layer,
            args.get("stage_nums", 1), args.get("div", 2), is_sys, is_norm,
            NOT_APPLICABLE if order is None else order)


def read_run(folder, notes):
    """One run's numbers, or None (with a note) when it cannot be counted."""
    try:
        args = read_yaml(os.path.join(folder, "args.yaml"))
    except (OSError, yaml.YAMLError) as error:
        notes.append(f"skipped {folder}: unreadable args.yaml ({' '.join(str(error).split())[:80]})")
        return None
    metrics_path = os.path.join(folder, "metrics.jsonl")
    try:
        rows = read_metrics(metrics_path) if os.path.isfile(metrics_path) else {}
    except ConfigError as error:
        notes.append(f"skipped {folder}: {error}")
        return None
    if not rows:
        notes.append(f"skipped {folder}: no metrics (metrics.jsonl missing or empty: no evaluation yet)")
        return None
    epochs = sorted(rows)
    planned = planned_epochs(folder, args)
    return {"folder": folder, "args": args, "key": group_key(args), "seed": args.get("seed"),
            "curve": [(e, rows[e]["top1"]) for e in epochs], "final": rows[epochs[-1]]["top1"],
            "best": max(row["top1"] for row in rows.values()), "last_epoch": epochs[-1], "epochs": planned,
            "unfinished": planned is not None and epochs[-1] < planned,
            "epoch_time": statistics.fmean(row["time"] for row in rows.values() if "time" in row)
            if any("time" in row for row in rows.values()) else None}


def num_classes(run):
    """The classifier width of a run: known datasets, else the 'N classes' of its log_train.txt, else None."""
    dataset = run["args"].get("dataset")
    if dataset in NUM_CLASSES:
        return NUM_CLASSES[dataset]
    log = os.path.join(run["folder"], "log_train.txt")
    if os.path.isfile(log):
        with open(log, encoding="utf-8", errors="replace") as f:
            match = re.search(r"(\d+) classes", f.read())
        if match:
            return int(match.group(1))
    return None


def complexity(run):
    """(parameters, GFLOPs per image) of the run's model, built on the meta device; (None, None) if unknown."""
    args, classes = run["args"], num_classes(run)
    if classes is None:
        return None, None
    key = dict(zip(KEY_FIELDS, run["key"]))
    kwargs = dict(backbone=args["backbone"], arch=args["arch"], num_classes=classes,
                  nl_type=None if key["block"] == "none" else key["block"], nl_nums=key["nl_nums"])
    if key["block"] != "none":
        kwargs.update(nl_layer=args.get("nl_layer") or ["1"], stage_num=args.get("stage_nums", 1),
                      div=args.get("div", 2), is_sys=args.get("is_sys"), is_norm=args.get("is_norm"))
        if args.get("order") is not None:
            kwargs["order"] = args["order"]
    try:
        with torch.device("meta"):
            model = build_model(**kwargs)
        params, flops = count(model, (3, key["input_size"], key["input_size"]))
    except (ConfigError, TypeError, ValueError):  # a model this version of the code cannot build
        return None, None
    return params, flops / 1e9


def mean_std(values):
    """(mean, sample standard deviation with n - 1, or None for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarize(runs):
    """One row per group (a dict), plain backbones first within each (dataset, backbone, arch, input size)."""
    groups = {}
    for run in runs:
        groups.setdefault(run["key"], []).append(run)
    rows = []
    for key, members in groups.items():
        members.sort(key=lambda r: (r["seed"] is None, r["seed"], r["folder"]))
        final_mean, final_std = mean_std([r["final"] for r in members])
        best_mean, best_std = mean_std([r["best"] for r in members])
        params, gflops = complexity(members[0])
        times = [r["epoch_time"] for r in members if r["epoch_time"] is not None]
        rows.append(dict(zip(KEY_FIELDS, key), runs=members, final_mean=final_mean, final_std=final_std,
                         best_mean=best_mean, best_std=best_std, params=params, gflops=gflops,
                         epoch_time=statistics.fmean(times) if times else None))
    plain = {row_base(row): row for row in rows if row["block"] == "none"}
    for row in rows:
        base = plain.get(row_base(row))
        row["delta_final"] = None if base is None else row["final_mean"] - base["final_mean"]
        row["delta_best"] = None if base is None else row["best_mean"] - base["best_mean"]
    rows.sort(key=lambda row: tuple(str(v) for v in row_base(row)) + (row["block"] != "none",)
              + tuple(str(row[f]) for f in KEY_FIELDS[4:]))
    return rows


def row_base(row):
    return row["dataset"], row["backbone"], row["arch"], row["input_size"]


def seed_label(run):
    seed = "?" if run["seed"] is None else str(run["seed"])
    return seed + (f" (unfinished: epoch {run['last_epoch']}/{run['epochs']})" if run["unfinished"] else "")


def blocks_label(row):
    if row["block"] == "none":
        return "plain"
    where = f" @ stage {row['nl_layer']}" if row["nl_layer"] != NOT_APPLICABLE else ""
    order = f", order {row['order']}" if row["order"] != NOT_APPLICABLE else ""
    return f"{row['nl_nums']} x {row['block']}{where}{order}"


def affinity_label(row):
    if row["is_sys"] == NOT_APPLICABLE:
        return NOT_APPLICABLE
    return ("norm" if row["is_norm"] else "plain") + (" sys" if row["is_sys"] else "")


def pm(mean, std):
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def signed(value):
    return NOT_APPLICABLE if value is None else f"{value:+.2f}"


def optional(value, fmt):
    return NOT_APPLICABLE if value is None else format(value, fmt)


def markdown(rows):
    lines = ["| dataset | model | input | blocks | stage_nums | div | affinity | seeds | params (M) | GFLOPs | "
             "final top-1 | best top-1 | Δ final vs plain | Δ best vs plain | s / epoch |",
             "|---|---|---:|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(" | ".join([
            f"| {row['dataset']}", f"{row['backbone']}-{row['arch']}", str(row["input_size"]), blocks_label(row),
            str(row["stage_nums"]), str(row["div"]), affinity_label(row),
            ", ".join(seed_label(run) for run in row["runs"]),
            optional(None if row["params"] is None else row["params"] / 1e6, ".3f"), optional(row["gflops"], ".4f"),
            pm(row["final_mean"], row["final_std"]), pm(row["best_mean"], row["best_std"]),
            signed(row["delta_final"]), signed(row["delta_best"]), optional(row["epoch_time"], ".1f")]) + " |")
    return "\n".join(lines)


CSV_FIELDS = KEY_FIELDS + ("runs", "seeds", "unfinished", "params", "gflops", "final_mean", "final_std", "best_mean",
                           "best_std", "delta_final", "delta_best", "sec_per_epoch", "folders")


def write_csv(rows, path):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        for row in rows:
            runs = row["runs"]
            writer.writerow([row[field] for field in KEY_FIELDS] + [
                len(runs), " ".join(str(r["seed"]) for r in runs), sum(r["unfinished"] for r in runs),
                row["params"], row["gflops"], row["final_mean"], row["final_std"], row["best_mean"], row["best_std"],
                row["delta_final"], row["delta_best"], row["epoch_time"], " ".join(r["folder"] for r in runs)])


def mean_curve(runs):
    """(epochs, mean, sample std or NaN) of test top-1 over the runs that have each epoch."""
    by_epoch = {}
    for run in runs:
        for epoch, top1 in run["curve"]:
            by_epoch.setdefault(epoch, []).append(top1)
    epochs = sorted(by_epoch)
    stats = [mean_std(by_epoch[e]) for e in epochs]
    return epochs, [m for m, _ in stats], [float("nan") if s is None else s for _, s in stats]


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    panels = {}
    for row in rows:
        panels.setdefault(row_base(row), []).append(row)
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (base, members) in zip(axes[0], panels.items()):
        for row in members:
            epochs, mean, std = (np.asarray(v, dtype=float) for v in mean_curve(row["runs"]))
            label = f"{blocks_label(row)}, {affinity_label(row)} (n={len(row['runs'])})".replace(", -", "")
            line, = ax.plot(epochs, mean, marker="o" if len(epochs) < 12 else None, markersize=3, label=label)
            ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
        dataset, backbone, arch, size = base
        ax.set_title(f"{dataset}, {backbone}-{arch}, {size}px: test top-1 (mean ± sample std over seeds)",
                     fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def get_parser():
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="run folders, or folders to search for them")
    parser.add_argument("--csv", metavar="FILE", help="also write the table as CSV (raw numbers)")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw the test top-1 curves")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    try:
        notes = []
        runs = [run for run in (read_run(folder, notes) for folder in find_run_folders(args.dirs)) if run]
        if not runs:
            raise ConfigError(f"no run with metrics under {', '.join(args.dirs)}"
                              + (f" ({len(notes)} run folder(s) skipped)" if notes else ""))
        rows = summarize(runs)
    except ConfigError as error:
        print(f"compare_runs.py: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(markdown(rows))
    print("\nfinal = the last evaluation, best = the highest test top-1 during training (selected on the test set "
          "for CIFAR); mean ± sample std (n - 1) over seeds, no std for one seed. s / epoch: mean wall time of an "
          "evaluated epoch (training + evaluation).")
    unfinished = [run for run in runs if run["unfinished"]]
    for run in unfinished:
        print(f"note: {run['folder']} is unfinished: last evaluation at epoch {run['last_epoch']} of "
              f"{run['epochs']}; its numbers are counted as they are")
    for note in notes:
        print(f"note: {note}")
    if args.csv:
        write_csv(rows, args.csv)
        print(f"wrote {args.csv}")
    if args.plot:
        plot(rows, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
