#!/usr/bin/env python3
"""Train and evaluate person re-identification: ResNets with nonlocal blocks (SNL and the others), image re-ID
(Market-1501, DukeMTMC-reID, MSMT17) and video re-ID (MARS, iLIDS-VID, PRID-2011).

    python train_reid.py --dataset market1501 --data-dir DATA --nl-type snl --nl-nums 5
    torchrun --nproc_per_node 4 train_reid.py --config configs/mars_reid50_snl.yaml --data-dir DATA
    python train_reid.py --dataset ilidsvid --data-dir DATA --split all     # the ten splits, mean and std
    python train_reid.py --valid --check_path CHECKPOINT --data-dir DATA --save-features features.npz
    python train_reid.py --dataset fake --output-dir /tmp/smoke              # smoke run, no data needed

BoT's recipe (video: Gao & Nevatia's) fills unset flags (lib/engine/reid/recipe.py). Each evaluation embeds the
query and gallery sets (every item once across processes), ranks the gallery for every query on process 0 and
reports CMC rank-1/5/10/20, mAP and mINP in percent; the best epoch is chosen by mAP. The run machinery
(mid-epoch checkpoints, preemption signals, exact resumes, torchrun) is lib/engine's lifecycle, shared with the
other tasks. Outputs go to <output-dir>/<dataset>/<backbone><arch>/<checkpoints>/. See docs/reid.md.
"""
import os

LAUNCHER_PID = os.getppid()  # first thing: under torchrun, a launcher that dies during the imports is noticed

import json
import sys
from argparse import Namespace
from functools import partial

import numpy as np

from lib.engine import epochs, lifecycle
from lib.engine.distributed import from_main
from lib.engine.reid import run as reid_run
from lib.engine.reid.cli import get_args_parser, parse_reid_args  # noqa: F401  (torchvision-style entry point)
from lib.engine.reid.evaluation import METRIC_NAMES
from lib.engine.reid.evaluation import evaluate as reid_evaluate
from lib.engine.reid.losses import ReidCriterion
from lib.engine.reid.recipe import resolve_reid_args
from lib.engine.reid.setup import ReidOptimizer, extract_features, load_reid_data, reid_forward, to_device
from lib.engine.resume_check import EPOCH_BASED, RESUMABLE, valid_dataset_from_checkpoint
from lib.engine.run_files import EpochFiles
from lib.engine.run_state import (
    check_model_flags,
    check_requested_model,
    checkpoint_to_validate,
    model_kwargs,
    run_folder,
)
from lib.engine.runtime import prepare_model as prepare_run_model
from lib.engine.runtime import run_cli
from lib.errors import ConfigError
from models import build_model, load_state_dict_checked

RERANK = (20, 6, 0.3)  # Zhong et al. 2017's k1, k2, lambda


def make_criterion(args, num_classes, feat_dim):
    """CE with label smoothing + the triplet loss (+ the center loss) of the flags (BoT; AGW with --triplet
    weighted)."""
    return ReidCriterion(num_classes, feat_dim, triplet=args.triplet, margin=args.margin,
                         label_smoothing=args.label_smoothing, center_weight=args.center_loss)


def train_one_epoch(model, criterion, optimizer, scaler, loader, ctx, epoch, lr, args, log, guard=None,
                    progress=None, save=None):
    """One epoch of P x K batches (lib.engine.epochs.train_one_epoch with the re-ID forward pass); the epoch's
    mean loss and identity top-1 over all processes."""
    unit = "tracklets" if args.backbone == "reid_video" else "img"
    return epochs.train_one_epoch(model, criterion, optimizer, scaler, loader, ctx, epoch, lr, args, log, to_device,
                                  guard=guard, progress=progress, save=save, unit=unit, accuracy="id top-1",
                                  forward=reid_forward)


def features_of(model, data, ctx, args, log):
    """{'qf', 'gf', 'q_pids', 'g_pids', 'q_camids', 'g_camids'} in every process (every item once)."""
    qf, q_pids, q_camids = extract_features(model, data["query_set"], ctx, args, log, "query")
    gf, g_pids, g_camids = extract_features(model, data["gallery_set"], ctx, args, log, "gallery")
    return dict(qf=qf, gf=gf, q_pids=q_pids, g_pids=g_pids, q_camids=q_camids, g_camids=g_camids)


def evaluate(model, data, ctx, args, log, features=None):
    """The retrieval protocol over the query and gallery sets: computed on process 0 and sent to every process,
    so all log and record the same numbers. features: already computed ones (features_of)."""
    f = features or features_of(model, data, ctx, args, log)
    stats = from_main(ctx, lambda: reid_run.in_percent(reid_evaluate(
        f["qf"], f["gf"], f["q_pids"], f["g_pids"], f["q_camids"], f["g_camids"], distance=args.distance,
        rerank=RERANK if args.rerank else None)))
    log.info(f" * {reid_run.metrics_line(stats)}{' (re-ranked)' if args.rerank else ''}")
    return stats


def save_features(path, features):
    """The arrays the evaluation used, for one's own analysis (numpy .npz)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, **{key: value.numpy() for key, value in features.items()})


def validate_checkpoint(args, ctx, log):
    """--valid: evaluate --check_path, rebuilt from its stored constructor arguments; --save-features X.npz."""
    checkpoint = checkpoint_to_validate(args, TASK, log)
    saved = checkpoint.get("model_args")
    if not saved:
        raise ConfigError(f"{args.check_path} has no model arguments: it was not written by train_reid.py")
    check_requested_model(saved, args.check_path, args, _model_kwargs(args, saved["num_classes"]), build_model)
    data = load_data(args, ctx)
    model = build_model(**saved)
    load_state_dict_checked(model, checkpoint["state_dict"])
    log.info(f"=> loaded {args.check_path} (epoch {checkpoint.get('epoch', '?')}); {len(data['query_set'])} "
             f"queries, {len(data['gallery_set'])} gallery entries")
    _, _, eval_model = prepare_run_model(model, args, ctx, log)
    features = features_of(eval_model, data, ctx, args, log)
    stats = evaluate(eval_model, data, ctx, args, log, features)
    if args.save_features and ctx.is_main:
        save_features(args.save_features, features)
        log.info(f"=> wrote {args.save_features} (qf, gf, q_pids, g_pids, q_camids, g_camids)")
    log.heading(f" * Final: {reid_run.metrics_line(stats)}")
    return stats


def log_setup(args, ctx, data, model, schedule, log):
    info = data["info"]
    params = sum(p.numel() for p in model.parameters()) / 1e6
    blocks = f"{args.nl_nums} {args.nl_type} block(s)" if args.nl_nums else "no nonlocal block"
    video = f", clips of {args.seq_len} frames, test sampling {args.test_sampling}" if info.video else ""
    log.info(f"=> data: {args.dataset} (split {args.split}): {info.num_train} train / {info.num_query} query / "
             f"{info.num_gallery} gallery, {info.num_classes} training identities; {args.img_size[0]}x"
             f"{args.img_size[1]}{video}")
    log.info(f"=> model: {args.backbone}-{args.arch} ({args.trunk} trunk) with {blocks}, last stride "
             f"{args.last_stride}, {args.pooling} pooling, {params:.2f}M parameters")
    log.info(f"=> loss: CE (label smoothing {args.label_smoothing}) + triplet {args.triplet} (margin {args.margin})"
             f"{f' + center {args.center_loss} (SGD lr {args.center_lr})' if args.center_loss else ''}; batch "
             f"{args.batch_size} = {args.batch_size // args.num_instances} ids x {args.num_instances} per process x "
             f"{ctx.world_size}; {args.epochs} epochs, Adam lr {schedule.base_lr:.6g} (warm-up "
             f"{args.warmup_epochs} epochs) x {args.lr_gamma} at {args.lr_steps}, weight decay {args.weight_decay}")


def _model_kwargs(args, num_classes, pretrained=None):
    extra = dict(last_stride=args.last_stride, pooling=args.pooling)
    if args.backbone == "reid_video":
        extra.update(temporal=args.temporal, trunk=args.trunk)
    return model_kwargs(args, num_classes, pretrained, **extra)


# ---- what this task gives the run lifecycle (lib/engine/__init__.py says what each name is for) ----
TASK, STEP_FILES, TOTAL_FLAG = "reid", EpochFiles, "epochs"
# Besides the common ones: how the evaluation measures (not what is trained) may change on a resume.
RESUMABLE_SETTINGS = RESUMABLE | EPOCH_BASED | {"distance", "rerank", "test_sampling", "save_features"}
tracker, summary, best_line, record = reid_run.reid_tracker, reid_run.summary_line, reid_run.best_line, reid_run.record
load_weights, load_data = load_state_dict_checked, load_reid_data


def resolve(args):
    return resolve_reid_args(valid_dataset_from_checkpoint(args, TASK))


def check_model(args):
    check_model_flags(build_model, _model_kwargs(args, 2))


def task_run_folder(args):
    """<output-dir>/<dataset>/<backbone><arch>/<checkpoints>, and split<k> in it for one of --split all's runs."""
    folder = run_folder(args)
    return os.path.join(folder, f"split{args.split}") if getattr(args, "all_splits", False) else folder


def create_model(args, data, pretrained):
    return build_model(**_model_kwargs(args, data["info"].num_classes, pretrained))


def prepare_model(model, args, ctx, log):
    return prepare_run_model(model, args, ctx, log)


def lr_schedule(args, ctx):
    return epochs.step_schedule(args, ctx, 64 if args.backbone == "reid" else 32)


def create_optimizer(model, args, lr):
    """Adam over the model; the criterion is built here because its center loss's centres are trained (and
    checkpointed) by the optimizer beside the model (lib.engine.reid.setup.ReidOptimizer)."""
    device = next(model.parameters()).device
    criterion = make_criterion(args, model.build_args["num_classes"], model.feature_dim).to(device)
    return ReidOptimizer(model, criterion, lr, args.weight_decay, args.center_lr)


def build_criterion(args):
    """run.criterion stays None: the criterion is the optimizer's (create_optimizer), run.optimizer.criterion."""
    return None


def selects(args):
    return True


def train_epoch(run, epoch, lr, progress, save):
    return train_one_epoch(run.train_model, run.optimizer.criterion, run.optimizer, run.scaler,
                           run.data["train_loader"], run.ctx, epoch, lr, run.args, run.log, guard=run.guard,
                           progress=progress, save=save)


def evaluate_run(run, finished):
    return evaluate(run.eval_model, run.data, run.ctx, run.args, run.log)


def run_splits(args):
    """--split all: the ten splits one after the other, each a full run (resumable) in <run folder>/split<k>;
    the final metrics' mean and sample std over the splits in <run folder>/splits_summary.json."""
    finals = {}
    for split in range(10):
        sub = Namespace(**dict(vars(args), split=split, all_splits=True))
        finals[split] = lifecycle.main(sys.modules[__name__], sub, LAUNCHER_PID)
    summary = {name: {"mean": float(np.mean([f[name] for f in finals.values()])),
                      "std": float(np.std([f[name] for f in finals.values()], ddof=1))} for name in METRIC_NAMES}
    summary["splits"] = {str(split): {name: f[name] for name in METRIC_NAMES} for split, f in finals.items()}
    if int(os.environ.get("RANK", "0")) == 0:
        os.makedirs(run_folder(args), exist_ok=True)
        with open(os.path.join(run_folder(args), "splits_summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
    print("=> ten splits: " + ", ".join(f"{name} {summary[name]['mean']:.2f} ± {summary[name]['std']:.2f}"
                                        for name in ("rank1", "rank5", "mAP")), flush=True)
    return summary


def main(args):  # train (or with --valid, evaluate): the final evaluation's stats; ConfigError for bad input
    if resolve(args).split == "all":
        return run_splits(args)
    return lifecycle.main(sys.modules[__name__], args, LAUNCHER_PID)


cli_main = partial(run_cli, main, parse_reid_args, "train_reid.py")  # the exit status and a one-line message

if __name__ == "__main__":
    sys.exit(cli_main())
