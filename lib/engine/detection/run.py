"""What a detection run tracks and reports: the best COCO box AP (model_best.pth.tar follows it) and, for Mask
R-CNN, the best mask AP, each with its epoch; the metrics.jsonl fields and tensorboard scalars of an evaluation;
the closing line. AP is in percent (COCOeval's 0..1 x 100), as the other tasks report top-1."""
from lib.engine.run_state import BestTracker, Tracked

BOX_AP = Tracked("bbox_AP", "best_bbox_AP", "best_bbox_AP_epoch", None, "box AP", ".2f")
MASK_AP = Tracked("segm_AP", "best_segm_AP", "best_segm_AP_epoch", None, "mask AP", ".2f")
# The metrics.jsonl / tensorboard names of COCOeval's numbers most read (all twelve per type go to metrics.jsonl).
TAGS = (("Box AP", "bbox_AP"), ("Box AP50", "bbox_AP50"), ("Box AP75", "bbox_AP75"), ("Mask AP", "segm_AP"),
        ("Mask AP50", "segm_AP50"), ("Mask AP75", "segm_AP75"))


def ap_tracker(args):
    return BestTracker((BOX_AP, MASK_AP) if args.model == "maskrcnn" else (BOX_AP,), "epoch")


def ap_text(stats):
    """'box AP 37.10 AP50 58.20 AP75 40.00 | mask AP ...' of an evaluation's stats."""
    parts = [f"{what} AP {stats[f'{kind}_AP']:.2f} AP50 {stats[f'{kind}_AP50']:.2f} AP75 {stats[f'{kind}_AP75']:.2f}"
             for kind, what in (("bbox", "box"), ("segm", "mask")) if f"{kind}_AP" in stats]
    return " | ".join(parts)


def _bests(best):
    """'box AP 37.10 (epoch 3), mask AP ...'; a metric never evaluated yet reads '-'."""
    return ", ".join(f"{m.label} {'-' if best.value(m.stat) is None else format(best.value(m.stat), '.2f')} "
                     f"(epoch {best.step(m.stat)})" for m in best.metrics)


def best_line(best):
    return " * Best " + _bests(best)


def summary_line(best, args=None):
    """The run's closing line: the final evaluation and the best APs, apart."""
    if best.last is None:
        return "=> done: no evaluation was run"
    last = best.last
    return f"=> done: final {ap_text(last)} (epoch {last['epoch']}) | best {_bests(best)}"


def record(stats, record):
    """The metrics.jsonl fields (every COCO number, in percent, and the images evaluated) and the scalars."""
    row = {key: value for key, value in stats.items() if key.startswith(("bbox_", "segm_")) or key == "n"}
    return row, [(tag, stats[key]) for tag, key in TAGS if key in stats]
