"""What a segmentation run tracks and reports: the best mIoU with its iteration (model_best.pth.tar follows it), and
the closing line. Its run folder (<output-dir>/<dataset>/<backbone><arch>/<checkpoints>) holds iter_<n>.pth.tar
(lib.engine.run_files.IterationFiles) beside model_best.pth.tar, log_train.txt, metrics.jsonl, tensorboard events
and args.yaml."""
import math

from lib.engine.run_state import BestTracker, Tracked

MIOU = (Tracked("mIoU", "best_miou", "best_iter", None, "mIoU", ".2f"),)


def miou_tracker(args=None):
    return BestTracker(MIOU, "iteration")


def best_line(best):
    value = best.value()
    return f" * best mIoU {value if value is not None else math.nan:.2f} (iteration {best.step()})"


def summary_line(best, args=None):
    """The run's closing line: the final evaluation and the best one, reported separately."""
    if best.last is None:
        return "=> done: no evaluation was run"
    last = best.last
    return (f"=> done: final mIoU {last['mIoU']:.2f} aAcc {last['aAcc']:.2f} (iteration {last['iteration']}) | "
            f"best mIoU {best.value():.2f} (iteration {best.step()})")
