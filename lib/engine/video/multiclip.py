"""The video-level test: --test-clips evenly spaced clips per video, their softmax scores averaged (3D-ResNets'
test), video top-1 / top-5 over every test video once, summed over processes."""
import time

import torch

from lib.engine.evaluation import summed_over
from lib.engine.metrics import format_seconds, percent, topk_correct
from lib.engine.runtime import autocast
from lib.engine.video.setup import to_device


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
    start = time.time()

    def measure(batch):
        logits, target = clip_logits_of(model, *batch, ctx, args)
        return (*topk_correct(video_scores(logits), target, (1, 5)), target.size(0))

    def report(i, correct1, correct5, count):
        elapsed = time.time() - start
        log.info(f"Video test [{i + 1}/{len(loader)}]  video top-1 {percent(correct1, count):.3f}  "
                 f"video top-5 {percent(correct5, count):.3f}  "
                 f"{count * args.test_clips * ctx.world_size / max(elapsed, 1e-9):.1f} clips/s  "
                 f"eta {format_seconds(elapsed / (i + 1) * (len(loader) - i - 1))}")
    correct1, correct5, count = summed_over(loader, ctx, measure, [0, 0, 0], "video test", report, args.print_freq)
    stats = {"video_top1": percent(correct1, count), "video_top5": percent(correct5, count), "videos": int(count)}
    log.info(f" * Video Prec@1 {stats['video_top1']:.3f} Video Prec@5 {stats['video_top5']:.3f}  "
             f"({stats['videos']} videos x {args.test_clips} clips, softmax averaged)")
    return stats
