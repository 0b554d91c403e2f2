"""What re-ID runs track and report: the best mAP (model_best.pth.tar follows it) and the best rank-1, each with
its epoch; the metrics rows (rank1 rank5 rank10 rank20 mAP mINP in percent, as top-1 elsewhere) and the lines."""
from lib.engine.reid.evaluation import METRIC_NAMES
from lib.engine.run_state import BestTracker, Tracked

TRACKED = (Tracked("mAP", "best_map", "best_map_epoch", None, "mAP", ".2f"),
           Tracked("rank1", "best_rank1", "best_rank1_epoch", None, "rank-1", ".2f"))
TAGS = {"rank1": "Rank1", "rank5": "Rank5", "rank10": "Rank10", "rank20": "Rank20", "mAP": "mAP", "mINP": "mINP"}


def reid_tracker(args=None):
    return BestTracker(TRACKED, "epoch")


def in_percent(metrics):
    """lib.engine.reid.evaluation's fractions as percentages; the query counts as they are."""
    return {key: 100.0 * value if key in METRIC_NAMES else value for key, value in metrics.items()}


def metrics_line(stats):
    return (f"rank-1 {stats['rank1']:.2f} rank-5 {stats['rank5']:.2f} rank-10 {stats['rank10']:.2f} "
            f"rank-20 {stats['rank20']:.2f} mAP {stats['mAP']:.2f} mINP {stats['mINP']:.2f} "
            f"({stats['num_queries']} queries, {stats['num_skipped']} without a match skipped)")


def best_line(best):
    return (f" * Best mAP {best.value('mAP'):.2f} (epoch {best.step('mAP')}), best rank-1 "
            f"{best.value('rank1'):.2f} (epoch {best.step('rank1')})")


def summary_line(best, args=None):
    """The closing line: the final evaluation and the best mAP / rank-1 apart."""
    if best.last is None:
        return "=> done: no evaluation was run"
    last = best.last
    return (f"=> done: final rank-1 {last['rank1']:.2f} mAP {last['mAP']:.2f} mINP {last['mINP']:.2f} (epoch "
            f"{last['epoch']}) | best mAP {best.value('mAP'):.2f} (epoch {best.step('mAP')}), best rank-1 "
            f"{best.value('rank1'):.2f} (epoch {best.step('rank1')})")


def record(stats, record=None):
    """(metrics.jsonl fields, tensorboard scalars) of an evaluation."""
    row = {name: stats[name] for name in METRIC_NAMES}
    row.update(num_queries=stats["num_queries"], num_skipped=stats["num_skipped"])
    return row, [(TAGS[name], stats[name]) for name in METRIC_NAMES]
