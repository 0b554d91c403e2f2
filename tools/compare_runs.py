#!/usr/bin/env python3
"""Compare training runs: every run folder under the given folders, grouped by experiment, one table per task.

    python tools/compare_runs.py save_model                        # markdown tables on stdout
    python tools/compare_runs.py save_model --csv out/runs.csv --plot out/curves.png
    python tools/compare_runs.py save_model/cifar10/20/snl_seed67 save_model/cifar10/20/snl_seed68

A run folder is one that holds args.yaml (docs/classification.md, "What a run writes"); its metrics.jsonl gives the
evaluations.
Each task gets its own table: classification (train_val.py: test top-1), segmentation (train_seg.py: mIoU),
video (train_video.py: clip top-1 and video top-1, each on its own), re-ID (train_reid.py: rank-1 and mAP) and
detection (train_det.py: COCO box AP and mask AP). A group holds the runs of one experiment:
runs whose every setting that changes what is trained and measured is equal (model arguments, dataset, input
size, epochs or iterations, batch size per process and number of processes, lr and its schedule, warm-up, weight
decay, momentum, augmentation, amp, recipe, ...; unset affinity flags resolved to the block's default; a run
resumed with other settings, args_resume_<n>.yaml, is an experiment of its own); only the seed may differ.
Settings that do not change the experiment (seed, folders, workers, print / evaluation frequency, checkpoints
kept, device, compile, channels-last, deterministic) are ignored. Where rows of one dataset and model differ in
settings the table does not show as columns, a "differs in" column gives each row's values.

Per group: seeds, parameters and GFLOPs per image (classification: the model built on the meta device, FLOPs
counted as tools/complexity.py does), final (the last evaluation) and best (the highest over training: selected
on the test data; re-ID / detection: every metric of the evaluation with the highest mAP / box AP, as their
entry points choose model_best) as mean ± the sample standard deviation over seeds (n - 1; none for one seed),
the difference of the means to the plain model's group (the same experiment without a block), and the mean wall
time per evaluation interval. A second run with a seed already in its group is a duplicate, not a new sample: it is
flagged and not counted. A run whose last evaluation is before its last epoch / iteration (args.yaml, or the
newest args_resume_*.yaml), or whose metrics.jsonl ends in a torn line (killed while writing; the line is
dropped), is marked unfinished and counted with what it has; a run without metrics is skipped with a note.
"""
import argparse
import csv
import functools
import glob
import io
import json
import math
import os
import re
import statistics
import sys

import torch
import yaml

import tools  # noqa: F401  (python tools/x.py: puts the repository root on sys.path, tools/tools.py)
from lib import NONLOCAL_BLOCKS
from lib.engine.cli import OneLineParser
from lib.engine.logger import replace_text
from lib.errors import ConfigError
from lib.stage import NonlocalStage
from models import build_model
from models.tasks import TASKS, args_task
from tools._measure import count
from tools._outputs import check_output_file, image_suffixes, pyplot, save_figure

NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000, "fake": 10}
INPUT_SIZES = {"cifar10": 32, "cifar100": 32, "fake": 32, "imagenet": 224, "imagefolder": 224}
NOT_APPLICABLE = "-"
NOT_RECORDED = "(not recorded)"
# Per task: the metrics.jsonl key counting progress, the args.yaml key of its planned total, the metrics of the
# table (key, label) and what one evaluation interval is called.
TASK_SPECS = {
    "classification": dict(step="epoch", planned="epochs", metrics=(("top1", "top-1"),), per="epoch"),
    "segmentation": dict(step="iteration", planned="iters", metrics=(("mIoU", "mIoU"),), per="eval"),
    "video": dict(step="epoch", planned="epochs", metrics=(("clip_top1", "clip top-1"), ("video_top1", "video top-1")),
                  per="epoch"),
    # re-ID and detection select their best checkpoint by one metric (mAP, box AP): "best" is every metric of
    # that evaluation (best_by), not each metric's own maximum, so that best rank-1 and best mAP are one model.
    "reid": dict(step="epoch", planned="epochs", metrics=(("rank1", "rank-1"), ("mAP", "mAP")), per="epoch",
                 best_by="mAP"),
    "detection": dict(step="epoch", planned="epochs", metrics=(("bbox_AP", "box AP"), ("segm_AP", "mask AP")),
                      per="epoch", best_by="bbox_AP"),
}
# args.yaml entries that do not change what is trained and measured: where outputs go, how fast, how often logged.
IGNORED = {"seed", "checkpoints", "output_dir", "resume", "resumename", "isresume", "valid", "check_path", "workers",
           "print_freq", "eval_freq", "eval_every", "keep_checkpoints", "device", "explicit", "config", "download",
           "num_gpu", "compile", "channels_last", "deterministic", "debug", "warmup", "task", "allow_changed",
           "world_size", "data_dir", "save_every", "save_every_minutes"}
# Entries that only mean something with a block (dropped for plain runs, so that they group together).
BLOCK_KEYS = ("nl_nums", "nl_layer", "stage_nums", "div", "is_sys", "is_norm", "order")
# Entries the table shows as columns; every other setting that varies goes to the "differs in" column.
SHOWN = {"dataset", "model", "backbone", "arch", "input_size", "crop_size", "clip_len", "frame_size", "img_size",
         "seq_len", "min_size", "max_size", "nl_type", *BLOCK_KEYS}
# What makes runs "of one dataset and model" (a model family: one panel of the plot, plain rows first).
FAMILY_KEYS = ("dataset", "model", "backbone", "arch", "input_size", "crop_size", "clip_len", "frame_size", "img_size",
               "seq_len", "min_size", "max_size")


# --- reading runs -----------------------------------------------------------------------------------------------

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


def resumed_args(folder):
    """[(start, values)] of the run's args_resume_<start>.yaml files (one per resume), oldest first."""
    resumes = []
    for path in glob.glob(os.path.join(folder, "args_resume_*.yaml")):
        match = re.search(r"args_resume_(\d+)\.yaml$", path)
        if match:
            values = read_yaml(path)
            resumes.append((int(match.group(1)), values if isinstance(values, dict) else {}))
    return sorted(resumes, key=lambda item: item[0])


def planned_total(folder, args, key):
    """--epochs / --iters of the run's latest start: the newest args_resume_<n>.yaml, else args.yaml."""
    resumes = resumed_args(folder)
    return resumes[-1][1].get(key, args.get(key)) if resumes else args.get(key)


def changed_on_resume(folder, args, planned_key):
    """('lr 0.1 -> 0.05 at 3', ...): settings a resume changed (knowingly, e.g. with --allow-changed); such a run
    is another experiment than one trained throughout with either value."""
    changes = []
    for start, values in resumed_args(folder):
        for key in sorted(set(values) | set(args)):
            if key in IGNORED or key == planned_key:
                continue
            before, after = freeze(args.get(key)), freeze(values.get(key))
            if before != after:
                changes.append(f"{key} {show(before)} -> {show(after)} at {start}")
    return tuple(changes)


def read_metrics(path, step_key, metric_key):
    """({step: row}, torn) of metrics.jsonl; a later row of the same step (a resumed run's) replaces the earlier.

    A last line that is not a complete record is a run killed while writing it: dropped, torn = True. A bad line
    anywhere else is a damaged file: ConfigError.
    """
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [(number, line) for number, line in enumerate(f, 1) if line.strip()]
    rows, torn = {}, False
    for position, (number, line) in enumerate(lines):
        try:
            row = json.loads(line)
            step = int(row[step_key])
            if metric_key not in row:
                raise KeyError(metric_key)
        except (ValueError, KeyError, TypeError):
            if position == len(lines) - 1:
                torn = True
                continue
            raise ConfigError(f"{path} line {number} is not a metrics record of a {step_key}-counting run: "
                              f"{line.strip()[:60]!r}") from None
        rows[step] = row
    return rows, torn


def number(value):
    """A metric value as float, None where absent or not a number (NaN is written as null)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def processes(folder, args):
    """How many processes trained the run (args.yaml's world_size, else its log's batch line), or None."""
    if args.get("world_size"):
        return str(args["world_size"])
    log = os.path.join(folder, "log_train.txt")
    if not os.path.isfile(log):
        return None
    with open(log, encoding="utf-8", errors="replace") as f:
        found = re.findall(r"per process x (\d+) process", f.read())
    return " then ".join(dict.fromkeys(found)) or None  # a resume with another world size shows both


def freeze(value):
    """A YAML value as a hashable, comparable one (lists -> tuples)."""
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    return value


def affinity_flags(nl_type, is_sys, is_norm):
    """(is_sys, is_norm) as the block builds them (unset = its default); not applicable for cgnl, cc."""
    cls = NONLOCAL_BLOCKS.get(nl_type)
    if cls is None or not issubclass(cls, NonlocalStage):
        return NOT_APPLICABLE, NOT_APPLICABLE
    return (cls.default_sys if is_sys is None else bool(is_sys)), (cls.default_norm if is_norm is None
                                                                    else bool(is_norm))


def experiment_settings(folder, args, task):
    """{setting: value} of everything in args.yaml that changes the experiment (see the module docstring)."""
    spec = TASK_SPECS[task]
    settings = {key: freeze(value) for key, value in args.items() if key not in IGNORED}
    settings[spec["planned"]] = planned_total(folder, args, spec["planned"])
    changes = changed_on_resume(folder, args, spec["planned"])
    if changes:
        settings["changed_on_resume"] = changes
    settings["batch_size"] = f"{args.get('batch_size', '?')} x {processes(folder, args) or '?'} process(es)"
    if "arch" in settings:
        settings["arch"] = str(settings["arch"])
    if task == "classification":
        settings["input_size"] = args.get("input_size") or INPUT_SIZES.get(args.get("dataset"), NOT_RECORDED)
    if args.get("dataset") == "imagefolder":  # the folder is the dataset
        settings["data_dir"] = os.path.normpath(str(args.get("data_dir")))
    nl_type = args.get("nl_type")
    if nl_type in (None, "none", "base") or args.get("nl_nums") == 0:
        settings["nl_type"] = "none"
        for key in BLOCK_KEYS:
            settings.pop(key, None)
    else:
        settings["is_sys"], settings["is_norm"] = affinity_flags(nl_type, args.get("is_sys"), args.get("is_norm"))
        if "nl_layer" in settings:
            settings["nl_layer"] = tuple(sorted(str(s) for s in args.get("nl_layer") or ["1"]))
    return settings


def read_run(folder, notes):
    """One run's numbers, or None (with a note) when it cannot be counted."""
    try:
        args = read_yaml(os.path.join(folder, "args.yaml"))
        if not isinstance(args, dict):
            raise yaml.YAMLError("not a mapping of flags")
    except (OSError, yaml.YAMLError) as error:
        notes.append(f"skipped {folder}: unreadable args.yaml ({' '.join(str(error).split())[:80]})")
        return None
    task = args_task(args)
    spec = TASK_SPECS[task]
    metrics_path = os.path.join(folder, "metrics.jsonl")
    try:
        rows, torn = read_metrics(metrics_path, spec["step"], spec["metrics"][0][0]) \
            if os.path.isfile(metrics_path) else ({}, False)
    except ConfigError as error:
        notes.append(f"skipped {folder}: {error}")
        return None
    if not rows:
        notes.append(f"skipped {folder}: no metrics (metrics.jsonl missing or empty: no evaluation yet)"
                     + (" (its only line is torn)" if torn else ""))
        return None
    steps = sorted(rows)
    planned = planned_total(folder, args, spec["planned"])
    run = {"folder": folder, "args": args, "task": task, "settings": experiment_settings(folder, args, task),
           "seed": args.get("seed"), "last_step": steps[-1], "planned": planned, "torn": torn,
           "unfinished": torn or (isinstance(planned, int) and steps[-1] < planned), "curves": {}, "final": {},
           "best": {}}
    chosen = best_step(rows, steps, spec.get("best_by"))
    for key, _ in spec["metrics"]:
        curve = [(step, number(rows[step].get(key))) for step in steps]
        curve = [(step, value) for step, value in curve if value is not None]
        run["curves"][key] = curve
        run["final"][key] = curve[-1][1] if curve else None
        if chosen is not None:
            run["best"][key] = number(rows[chosen].get(key))
        else:
            run["best"][key] = max(value for _, value in curve) if curve and selectable(task, args, key) else None
    times = [number(row.get("time")) for row in rows.values()]
    times = [t for t in times if t is not None]
    run["time"] = statistics.fmean(times) if times else None
    return run


def best_step(rows, steps, key):
    """The step whose `key` is highest (the earliest of equals, as a best-checkpoint tracker keeps it); None
    without a best_by key or any value of it."""
    if key is None:
        return None
    scored = [(number(rows[step].get(key)), step) for step in steps]
    scored = [(value, step) for value, step in scored if value is not None]
    return max(scored, key=lambda item: (item[0], -item[1]))[1] if scored else None


# --- grouping ---------------------------------------------------------------------------------------------------

def group_key(run):
    return run["task"], tuple(sorted(run["settings"].items(), key=lambda item: item[0]))


def plain_key(run):
    """The key of the same experiment without a block."""
    settings = {k: v for k, v in run["settings"].items() if k not in BLOCK_KEYS}
    settings["nl_type"] = "none"
    return run["task"], tuple(sorted(settings.items(), key=lambda item: item[0]))


def split_duplicates(members):
    """(counted, duplicates): one run per seed, the most advanced (finished, then furthest), else the first."""
    counted, duplicates, by_seed = [], [], {}
    for run in sorted(members, key=lambda r: (r["unfinished"], -r["last_step"], r["folder"])):
        seed = run["seed"]
        if seed is not None and seed in by_seed:
            run["duplicate_of"] = by_seed[seed]["folder"]
            duplicates.append(run)
            continue
        by_seed.setdefault(seed, run)
        counted.append(run)
    return counted, duplicates


def selectable(task, args, key):
    """Whether a "best" over the curve of `key` is shown: not where it would be a selection on a video run's test
    split (video top-1 is only measured there; clip top-1 too with --validation test)."""
    if task != "video":
        return True
    return key != "video_top1" and args.get("validation", "holdout") != "test"


def mean_std(values):
    """(mean, sample standard deviation with n - 1, or None for one value); (None, None) for no value."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


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
    """(parameters, GFLOPs per image) of a classification run's model, built on the meta device; else (None, None)."""
    args, settings, classes = run["args"], run["settings"], num_classes(run)
    if run["task"] != "classification" or classes is None:
        return None, None
    plain = settings["nl_type"] == "none"
    kwargs = dict(backbone=args.get("backbone"), arch=args.get("arch"), num_classes=classes,
                  nl_type=None if plain else settings["nl_type"], nl_nums=0 if plain else args.get("nl_nums", 1))
    if not plain:
        kwargs.update(nl_layer=args.get("nl_layer") or ["1"], stage_num=args.get("stage_nums", 1),
                      div=args.get("div", 2), is_sys=args.get("is_sys"), is_norm=args.get("is_norm"))
        if args.get("order") is not None:
            kwargs["order"] = args["order"]
    return model_complexity(freeze(kwargs), settings["input_size"])


@functools.lru_cache(maxsize=None)
def model_complexity(kwargs, size):
    """(parameters, GFLOPs per image) of build_model(**kwargs) at size x size (kwargs frozen); once per model."""
    kwargs = {key: list(value) if isinstance(value, tuple) else value for key, value in kwargs}
    try:
        with torch.device("meta"):
            model = build_model(**kwargs)
        params, flops = count(model, (3, size, size))
    except (ConfigError, TypeError, ValueError, KeyError):  # a model this version of the code cannot build
        return None, None
    return params, flops / 1e9


def summarize(runs):
    """{task: [group row]}: one row per experiment, plain models first within each model family."""
    groups = {}
    for run in runs:
        groups.setdefault(group_key(run), []).append(run)
    tables = {}
    for (task, _), members in groups.items():
        counted, duplicates = split_duplicates(members)
        counted.sort(key=lambda r: (r["seed"] is None, r["seed"] if isinstance(r["seed"], int) else 0, r["folder"]))
        row = {"task": task, "settings": counted[0]["settings"], "runs": counted, "duplicates": duplicates,
               "plain_key": plain_key(counted[0]), "is_plain": counted[0]["settings"]["nl_type"] == "none",
               "time": mean_std([r["time"] for r in counted])[0], "metrics": {}}
        for key, _ in TASK_SPECS[task]["metrics"]:
            row["metrics"][key] = dict(zip(("final_mean", "final_std"), mean_std([r["final"][key] for r in counted])))
            row["metrics"][key].update(zip(("best_mean", "best_std"), mean_std([r["best"][key] for r in counted])))
        row["params"], row["gflops"] = complexity(counted[0])
        tables.setdefault(task, []).append(row)
    for task, rows in tables.items():
        plain = {group_key(row["runs"][0]): row for row in rows if row["is_plain"]}
        for row in rows:
            base = plain.get(row["plain_key"])
            for key, values in row["metrics"].items():
                for which in ("final", "best"):
                    ours = values[f"{which}_mean"]
                    theirs = None if base is None else base["metrics"][key][f"{which}_mean"]
                    values[f"delta_{which}"] = None if ours is None or theirs is None else ours - theirs
        families = {}
        for row in rows:
            families.setdefault(family(row), []).append(row)
        for members in families.values():  # otherwise alike: same dataset, model and input
            hidden = varying_hidden_settings(members)
            for row in members:
                row["differs"] = {key: setting(row, key) for key in hidden}
        rows.sort(key=lambda row: (family(row), not row["is_plain"], label_of(row),
                                   tuple(str(v) for v in row["differs"].values())))
    return {task: tables[task] for task in TASKS if task in tables}, sorted({
        key for rows in tables.values() for row in rows for key in row["differs"]})


def varying_hidden_settings(rows):
    """Settings not shown as columns whose value differs between groups of one table, sorted."""
    keys = set()
    for row in rows:
        keys |= set(row["settings"])
    return sorted(key for key in keys - SHOWN
                  if len({repr(setting(row, key)) for row in rows}) > 1)


def setting(row, key):
    """A group's value of a setting; a run without a resume that changed settings has 'none' of them."""
    return row["settings"].get(key, "none" if key == "changed_on_resume" else NOT_RECORDED)


# --- formatting -------------------------------------------------------------------------------------------------

def family(row):
    s = row["settings"]
    return tuple(str(s.get(k, "")) for k in FAMILY_KEYS)


def model_label(row):
    s = row["settings"]
    if row["task"] == "detection":  # the detector, on a ResNet-FPN
        return f"{s.get('model', '?')} {s.get('backbone', 'resnet')}-{s.get('arch', '?')}-FPN"
    return f"{s.get('backbone', '?')}-{s.get('arch', '?')}"


def input_label(row):
    s = row["settings"]
    if row["task"] == "segmentation":
        crop = s.get("crop_size")
        return f"crop {crop[0]}x{crop[1]}" if isinstance(crop, tuple) and len(crop) == 2 else str(crop)
    if row["task"] == "video":
        return f"{s.get('clip_len', '?')} x {s.get('frame_size', '?')}px"
    if row["task"] == "reid":
        size = s.get("img_size")
        size = f"{size[0]}x{size[1]}" if isinstance(size, tuple) and len(size) == 2 else str(size)
        return size + (f", {s['seq_len']} frames" if s.get("backbone") == "reid_video" and "seq_len" in s else "")
    if row["task"] == "detection":
        return f"{s.get('min_size', '?')}-{s.get('max_size', '?')}"
    return str(s.get("input_size"))


def label_of(row):
    """The block column: plain, or 'N x type @ stage S, order K'."""
    s = row["settings"]
    if row["is_plain"]:
        return "plain"
    count = f"{s['nl_nums']} x " if "nl_nums" in s else ""
    where = f" @ stage {','.join(s['nl_layer'])}" if s.get("backbone") == "preresnet" and "nl_layer" in s else ""
    order = f", order {s['order']}" if s.get("order") is not None else ""
    return f"{count}{s['nl_type']}{where}{order}"


def affinity_label(row):
    s = row["settings"]
    if row["is_plain"] or s.get("is_sys") == NOT_APPLICABLE:
        return NOT_APPLICABLE
    return ("norm" if s.get("is_norm") else "plain") + (" sys" if s.get("is_sys") else "")


def show(value):
    if isinstance(value, tuple) and value and all(isinstance(v, str) and " -> " in v for v in value):
        return "; ".join(value)  # changed_on_resume
    if isinstance(value, tuple):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return str(value)


def settings_label(row):
    return ", ".join(f"{key} {show(value)}" for key, value in row["differs"].items()) or NOT_APPLICABLE


def seed_label(run):
    seed = "?" if run["seed"] is None else str(run["seed"])
    if run["torn"]:
        return f"{seed} (unfinished: torn last line, {run['last_step']}/{run['planned']})"
    return seed + (f" (unfinished: {run['last_step']}/{run['planned']})" if run["unfinished"] else "")


def seeds_label(row):
    duplicates = [f"{'?' if r['seed'] is None else r['seed']} (duplicate, not counted)" for r in row["duplicates"]]
    return ", ".join([seed_label(run) for run in row["runs"]] + duplicates)


def pm(mean, std):
    if mean is None:
        return NOT_APPLICABLE
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def signed(value):
    return NOT_APPLICABLE if value is None else f"{value:+.2f}"


def optional(value, fmt):
    return NOT_APPLICABLE if value is None else format(value, fmt)


def markdown(task, rows):
    spec = TASK_SPECS[task]
    hidden = any(row["differs"] for row in rows)
    head = ["dataset", "model", "input", "blocks", "stage_nums", "div", "affinity"]
    head += ["differs in"] if hidden else []
    head += ["seeds"] + (["params (M)", "GFLOPs"] if task == "classification" else [])
    for _, name in spec["metrics"]:
        head += [f"final {name}", f"best {name}"]
    for _, name in spec["metrics"]:
        head += [f"Δ final {name} vs plain", f"Δ best {name} vs plain"]
    head += [f"s / {spec['per']}"]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join("---:" if h.startswith(("params", "GFLOPs", "final", "best", "Δ", "s /", "stage", "div",
                                                    "input")) else "---" for h in head) + "|"]
    for row in rows:
        s = row["settings"]
        cells = [str(s.get("dataset")), model_label(row), input_label(row), label_of(row),
                 str(s.get("stage_nums", NOT_APPLICABLE)), str(s.get("div", NOT_APPLICABLE)), affinity_label(row)]
        cells += [settings_label(row)] if hidden else []
        cells += [seeds_label(row)]
        if task == "classification":
            cells += [optional(None if row["params"] is None else row["params"] / 1e6, ".3f"),
                      optional(row["gflops"], ".4f")]
        for key, _ in spec["metrics"]:
            m = row["metrics"][key]
            cells += [pm(m["final_mean"], m["final_std"]), pm(m["best_mean"], m["best_std"])]
        for key, _ in spec["metrics"]:
            cells += [signed(row["metrics"][key]["delta_final"]), signed(row["metrics"][key]["delta_best"])]
        cells += [optional(row["time"], ".1f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


TITLES = {"classification": "classification runs (train_val.py): test top-1 (%)",
          "segmentation": "segmentation runs (train_seg.py): mIoU (%)",
          "video": "video runs (train_video.py): clip top-1 and video top-1 (%), reported separately",
          "reid": "re-ID runs (train_reid.py): rank-1 and mAP (%, as metrics.jsonl records them); best = the "
                  "evaluation with the highest mAP",
          "detection": "detection runs (train_det.py): COCO box AP and mask AP (%, COCOeval's AP x 100 as "
                       "metrics.jsonl records them); best = the evaluation with the highest box AP"}
CSV_FIELDS = ("task", "metric", "dataset", "backbone", "arch", "input", "block", "nl_nums", "nl_layer", "stage_nums",
              "div", "is_sys", "is_norm", "order", "differs_in", "runs", "seeds", "duplicates", "unfinished", "params",
              "gflops", "final_mean", "final_std", "best_mean", "best_std", "delta_final", "delta_best",
              "sec_per_interval", "folders", "settings")


def write_csv(tables, path):
    """One line per group and metric (video groups have two: clip_top1 and video_top1); raw numbers."""
    f = io.StringIO(newline="")  # written whole at the end (replace_text): a full disk leaves no half file
    writer = csv.writer(f)
    writer.writerow(CSV_FIELDS)
    for task, rows in tables.items():
        for row in rows:
            s, runs = row["settings"], row["runs"]
            for key, values in row["metrics"].items():
                writer.writerow([
                    task, key, s.get("dataset"), s.get("backbone"), s.get("arch"), input_label(row),
                    s.get("nl_type"), *(show(s.get(k, NOT_APPLICABLE)) if k == "nl_layer" else
                                        s.get(k, NOT_APPLICABLE) for k in BLOCK_KEYS),
                    settings_label(row), len(runs), " ".join(str(r["seed"]) for r in runs),
                    " ".join(r["folder"] for r in row["duplicates"]), sum(r["unfinished"] for r in runs),
                    row["params"], row["gflops"], values["final_mean"], values["final_std"], values["best_mean"],
                    values["best_std"], values["delta_final"], values["delta_best"], row["time"],
                    " ".join(r["folder"] for r in runs),
                    json.dumps({k: show(v) for k, v in sorted(s.items())}, default=str)])
    replace_text(path, f.getvalue())


# --- curves -----------------------------------------------------------------------------------------------------

def mean_curve(runs, key):
    """(steps, mean, sample std or NaN) of the metric over the runs that have each step."""
    by_step = {}
    for run in runs:
        for step, value in run["curves"][key]:
            by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    stats = [mean_std(by_step[s]) for s in steps]
    return steps, [m for m, _ in stats], [float("nan") if s is None else s for _, s in stats]


LINE_STYLES = ("-", "--", "-.", ":")


def figure(tables):
    """One panel per task, model family and metric; one line per group (mean over seeds, band of ± one sample
    std), 20 distinct colours x 4 line styles, the legend to the right of the axes, integer x ticks."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator
    plt = pyplot()

    panels = []
    for task, rows in tables.items():
        families = {}
        for row in rows:
            families.setdefault(family(row), []).append(row)
        for members in families.values():
            for key, name in TASK_SPECS[task]["metrics"]:
                if any(run["curves"][key] for row in members for run in row["runs"]):  # Faster R-CNN: no mask AP
                    panels.append((task, key, name, members))
    colours = plt.get_cmap("tab20").colors
    tallest = max(len(members) for *_, members in panels)
    fig, axes = plt.subplots(len(panels), 1, figsize=(13, max(3.5, 0.28 * tallest + 1.5) * len(panels)),
                             squeeze=False)
    for ax, (task, key, name, members) in zip(axes[:, 0], panels):
        for k, row in enumerate(members):
            steps, mean, std = (np.asarray(v, dtype=float) for v in mean_curve(row["runs"], key))
            if not len(steps):
                continue
            colour = colours[(2 * k) % 20 if k < 10 else (2 * k + 1) % 20]  # the dark shades first
            label = " ".join(part for part in (label_of(row), affinity_label(row).replace(NOT_APPLICABLE, ""),
                                               settings_label(row).replace(NOT_APPLICABLE, "")) if part)
            ax.plot(steps, mean, color=colour, linestyle=LINE_STYLES[(k // 10 + k) % len(LINE_STYLES)],
                    marker="o" if len(steps) < 12 else None, markersize=3, label=f"{label} (n={len(row['runs'])})")
            ax.fill_between(steps, mean - std, mean + std, color=colour, alpha=0.15, linewidth=0)
        s = members[0]["settings"]
        ax.set_title(f"{task}: {s.get('dataset')}, {model_label(members[0])}, {input_label(members[0])}: {name} "
                     f"(mean ± sample std over seeds)", fontsize=9)
        ax.set_xlabel(TASK_SPECS[task]["step"])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{name} (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    return fig


def plot(tables, path):
    fig = figure(tables)
    save_figure(fig, path, dpi=80, bbox_inches="tight")
    pyplot().close(fig)


# --- command line -----------------------------------------------------------------------------------------------

def check_output(flag, path, suffixes=None):
    """One line, before any work, when `path` cannot be written; its missing folders are created."""
    check_output_file(flag, path, suffixes)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def get_parser():
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="run folders, or folders to search for them")
    parser.add_argument("--csv", metavar="FILE", help="also write the tables as CSV (raw numbers; missing folders "
                        "are created)")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw the curves (any format matplotlib writes: "
                        ".png, .pdf, .svg, ...; missing folders are created)")
    return parser


FOOTNOTE = ("final = the last evaluation, best = the highest during training (selected on the evaluated data; "
            "not shown where a video run would select on its test split; re-ID / detection: the evaluation with the "
            "highest mAP / box AP); mean ± sample std (n - 1) over seeds, "
            "no std for one seed; Δ: to the same experiment without a block. "
            "s / epoch (s / eval): mean wall time of an evaluation interval (training + evaluation).")


def main(argv=None):
    args = get_parser().parse_args(argv)
    try:
        if args.csv:
            check_output("--csv", args.csv)
        if args.plot:
            check_output("--plot", args.plot, image_suffixes())
        notes = []
        runs = [run for run in (read_run(folder, notes) for folder in find_run_folders(args.dirs)) if run]
        if not runs:
            raise ConfigError(f"no run with metrics under {', '.join(args.dirs)}"
                              + (f" ({len(notes)} run folder(s) skipped: {notes[0]})" if notes else ""))
        tables, differing = summarize(runs)
        outputs = []
        if args.csv:
            write_csv(tables, args.csv)
            outputs.append(args.csv)
        if args.plot:
            plot(tables, args.plot)
            outputs.append(args.plot)
    except (ConfigError, OSError) as error:
        print(f"compare_runs.py: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    for task, rows in tables.items():
        print(f"{TITLES[task]}\n")
        print(markdown(task, rows))
        print()
    print(FOOTNOTE)
    if differing:
        print(f"note: groups differ in settings other than the model: {', '.join(differing)} (column "
              f"\"differs in\"); rows of one dataset and model that differ in them are separate experiments, not "
              f"seeds of one")
    for rows in tables.values():
        for row in rows:
            for run in row["runs"]:
                if run["unfinished"]:
                    why = "its metrics.jsonl ends in a torn line (dropped)" if run["torn"] else "last evaluation"
                    print(f"note: {run['folder']} is unfinished: {why} at {TASK_SPECS[run['task']]['step']} "
                          f"{run['last_step']} of {run['planned']}; its numbers are counted as they are")
            for run in row["duplicates"]:
                print(f"note: {run['folder']} has seed {run['seed']}, as {run['duplicate_of']} in the same "
                      f"experiment: a duplicate, not another sample; not counted")
    for note in notes:
        print(f"note: {note}")
    for path in outputs:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
