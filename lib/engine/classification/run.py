"""What classification's runs (and video's, which measure the same accuracies on clips) track and report: the best
top-1 and top-5, each with its epoch (model_best.pth.tar follows top-1), and the closing line."""
from lib.engine.run_state import BestTracker, Tracked

# best_prec1 keeps the reference's key name (and a 0 for "none yet", as its initial value).
ACCURACIES = (Tracked("top1", "best_prec1", "best_prec1_epoch", 0.0, "top-1", ".3f"),
              Tracked("top5", "best_prec5", "best_prec5_epoch", 0.0, "top-5", ".3f"))


def accuracy_tracker(args=None):
    return BestTracker(ACCURACIES, "epoch")


def best_line(best, what="accuracy"):
    return (f" * Best {what}: Prec@1 {best.value('top1'):.3f} (epoch {best.step('top1')}), Prec@5 "
            f"{best.value('top5'):.3f} (epoch {best.step('top5')})")


def summary_line(best, args=None):
    """The run's closing line: final and best top-1 / top-5 (the reference reported only the best, which is
    selected on the test set; both are given here)."""
    if best.last is None:
        return "=> done: no evaluation was run"
    last = best.last
    return (f"=> done: final top-1 {last['top1']:.3f} top-5 {last['top5']:.3f} (epoch {last['epoch']}) | "
            f"best top-1 {best.value('top1'):.3f} (epoch {best.step('top1')}), best top-5 {best.value('top5'):.3f} "
            f"(epoch {best.step('top5')})")
