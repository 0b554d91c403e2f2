"""The video-level test: --test-clips evenly spaced clips per video, their softmax scores averaged (3D-ResNets'
test), video top-1 / top-5 over every test video once, summed over processes."""
import time

import torch

from lib.engine.distributed import all_reduce_sums, any_process
from lib.engine.metrics import format_seconds, percent, topk_correct
from lib.engine.runtime import autocast
from lib.engine.video.setup import to_device
from lib.engine.preemption import loader_failure
from lib.errors import ConfigError


def clip_logits_of(model, videos, target, ctx, args):
    """(B, K, 3, T, S, S) videos of K clips -> ((B, K, classes) float logits, target on the device), all clips in
    one forward pass."""
    batch, clips = videos.shape[:2]
    flat, target = to_device(videos.flatten(0, 1), target, ctx, args)
    with autocast(ctx.device, args.amp):
        logits = model(flat)
    return logits.float().view(batch, clips, -1), target


@torch.no_grad()
def evaluate_videos(model, loader, ctx, args, log):
    """{'video_top1', 'video_top5', 'videos'}: each video's class scores are its clips' softmax averaged."""
    from lib.data.video import video_scores
    model.eval()
    correct1 = correct5 = count = 0
    error, start = None, time.time()
    try:
        for i, (videos, target) in enumerate(loader):
            logits, target = clip_logits_of(model, videos, target, ctx, args)
            scores = video_scores(logits)
            hits1, hits5 = topk_correct(scores, target, (1, 5))
            correct1, correct5, count = correct1 + hits1, correct5 + hits5, count + target.size(0)
            if i % args.print_freq == 0:
                elapsed = time.time() - start
                log.info(f"Video test [{i + 1}/{len(loader)}]  video top-1 {percent(correct1, count):.3f}  "
                         f"video top-5 {percent(correct5, count):.3f}  "
                         f"{count * args.test_clips * ctx.world_size / max(elapsed, 1e-9):.1f} clips/s  "
                         f"eta {format_seconds(elapsed / (i + 1) * (len(loader) - i - 1))}")
    except ConfigError as caught:  # e.g. an unreadable video in this process's shard
        error = caught
    except RuntimeError as caught:  # a loader worker that died or hung: one line, as bad input
        error = loader_failure(caught)
        if error is None:
            raise
    # Agreed by all processes, so that all stop together (a lone raise would leave the others waiting).
    if any_process(ctx, error is not None):
        raise error or ConfigError("the video test failed in another process (its error is printed above)")
    correct1, correct5, count = all_reduce_sums(ctx, [correct1, correct5, count])
    stats = {"video_top1": percent(correct1, count), "video_top5": percent(correct5, count), "videos": int(count)}
    log.info(f" * Video Prec@1 {stats['video_top1']:.3f} Video Prec@5 {stats['video_top5']:.3f}  "
             f"({stats['videos']} videos x {args.test_clips} clips, softmax averaged)")
    return stats
