"""The evaluation loop of the classifying entry points (train_val.py, train_video.py and its multi-clip test): sums
over a loader, reduced over processes, where bad input in one process stops every process together."""
import torch.nn.functional as F

from lib.engine.distributed import all_reduce_sums, any_process
from lib.engine.metrics import percent, topk_correct
from lib.engine.preemption import loader_failure
from lib.engine.runtime import autocast
from lib.errors import ConfigError


def summed_over(loader, ctx, measure, sums, what, report, every):
    """sums (numbers) plus measure(batch) (as many numbers) for every batch of loader, summed over processes;
    report(i, sums) after batch i when i % every == 0. `what` names the loop in the other processes' error."""
    error = None
    try:
        for i, batch in enumerate(loader):
            sums = [total + value for total, value in zip(sums, measure(batch))]
            if i % every == 0:
                report(i, *sums)
    except ConfigError as caught:  # e.g. an unreadable image or video in this process's shard
        error = caught
    except RuntimeError as caught:  # a loader worker that died or hung: one line, as bad input
        error = loader_failure(caught)
        if error is None:
            raise
    # Agreed by all processes, so that all stop together (a lone raise would leave the others waiting).
    if any_process(ctx, error is not None):
        raise error or ConfigError(f"the {what} failed in another process (its error is printed above)")
    return all_reduce_sums(ctx, sums)


def classifier_stats(model, loader, ctx, args, to_device, report, log, kind="", samples="images"):
    """{'top1', 'top5', 'loss', 'n'} of model over every sample of loader once (to_device(inputs, target, ctx,
    args) moves a batch); report(i, loss_sum, correct1, correct5, count) every --print-freq batches; the result
    logged on one line (kind: "Clip " for " * Clip Prec@1 ..."; samples: what n counts)."""
    def measure(batch):
        inputs, target = to_device(*batch, ctx, args)
        with autocast(ctx.device, args.amp):
            output = model(inputs)
        hits1, hits5 = topk_correct(output, target, (1, 5))
        return F.cross_entropy(output.float(), target, reduction="sum").item(), hits1, hits5, target.size(0)

    loss_sum, correct1, correct5, count = summed_over(loader, ctx, measure, [0, 0, 0, 0], "evaluation", report,
                                                      args.print_freq)
    stats = {"top1": percent(correct1, count), "top5": percent(correct5, count),
             "loss": loss_sum / count if count else float("nan"), "n": int(count)}
    log.info(f" * {kind}Prec@1 {stats['top1']:.3f} {kind}Prec@5 {stats['top5']:.3f}  loss {stats['loss']:.4f}  "
             f"({stats['n']} {samples})")
    return stats
