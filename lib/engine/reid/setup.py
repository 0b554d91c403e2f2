"""What train_reid.py builds from its flags: the data with the P x K identity sampler, the optimizer (Adam, and
the center loss's own SGD), the training forward pass, and the test features of a query or gallery set."""
import time

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from lib.data import loader_options
from lib.data.samplers import BatchSkipInSamples, ContiguousShardSampler, SeededAugmentation
from lib.engine.distributed import gather_objects, local_main_first
from lib.engine.metrics import format_seconds
from lib.engine.runtime import autocast


def load_reid_data(args, ctx):
    """The data dict of the epoch loop: the three sets, their info, and the training loader of P x K batches
    (each process its own identities; every draw a function of (seed, epoch), so resumes are exact)."""
    from lib.data.reid_sampler import IdentityBatchSampler
    from lib.data.reid_sets import build_reid_datasets
    train_set, query_set, gallery_set, info = local_main_first(ctx, lambda: build_reid_datasets(
        args.dataset, args.data_dir, img_size=args.img_size, hflip=args.hflip, pad=args.pad, erasing=args.erasing,
        seq_len=args.seq_len, test_sampling=args.test_sampling, split=args.split))
    sampler = IdentityBatchSampler(train_set.pids, args.batch_size, args.num_instances, ctx.world_size, ctx.rank,
                                   args.seed)
    loader = DataLoader(SeededAugmentation(train_set), batch_sampler=sampler,
                        **loader_options(args.workers, ctx.device, args.seed))
    return dict(train_set=train_set, query_set=query_set, gallery_set=gallery_set, info=info, train_loader=loader,
                train_sampler=BatchSkipInSamples(sampler, args.batch_size))


class ReidOptimizer:
    """Adam over the model and, with a center loss, SGD over its centres, stepped together, with one state_dict
    (both optimizers and the centres themselves: they are not part of the model) so that a resume is exact.

    param_groups are Adam's: the lr schedule drives the model's lr; the centres keep their own lr (BoT). BoT
    divides the centres' gradients by the loss weight before their step, so they learn from the unweighted loss.
    Under torchrun the centres' gradients are averaged over the processes, as DDP does for the model's."""

    def __init__(self, model, criterion, lr, weight_decay, center_lr):
        self.adam = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        self.criterion = criterion
        self.centers = criterion.center_parameters()
        self.center_sgd = torch.optim.SGD(self.centers, lr=center_lr) if self.centers else None

    @property
    def param_groups(self):
        return self.adam.param_groups

    def zero_grad(self, set_to_none=True):
        self.adam.zero_grad(set_to_none=set_to_none)
        if self.center_sgd is not None:
            self.center_sgd.zero_grad(set_to_none=set_to_none)

    def step(self):
        self.adam.step()
        if self.center_sgd is None:
            return
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        for param in self.centers:
            if param.grad is not None:
                if world > 1:
                    dist.all_reduce(param.grad)
                param.grad.div_(world * self.criterion.center_weight)
        self.center_sgd.step()

    def state_dict(self):
        return {"adam": self.adam.state_dict(), "criterion": self.criterion.state_dict(),
                "center_sgd": self.center_sgd.state_dict() if self.center_sgd is not None else None}

    def load_state_dict(self, state):
        self.adam.load_state_dict(state["adam"])
        self.criterion.load_state_dict(state["criterion"])
        if self.center_sgd is not None:
            self.center_sgd.load_state_dict(state["center_sgd"])


def to_device(inputs, pids, camids, ctx, args):
    """A training batch (images or clips, pids, camids) on the device; the camera ids are not used in training."""
    inputs = inputs.to(ctx.device, non_blocking=True)
    if args.channels_last and inputs.dim() == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return inputs, pids.to(ctx.device, non_blocking=True)


def reid_forward(model, criterion, inputs, pids):
    """(loss, logits): the training model gives logits and the pre-BN feature; ReidCriterion's total over both."""
    logits, feature = model(inputs)
    loss, _ = criterion(logits.float(), feature.float(), pids)
    return loss, logits


@torch.no_grad()
def extract_features(model, dataset, ctx, args, log, what):
    """(features (N, D) float32, pids (N,), camids (N,)) of every item of dataset, on the CPU in every process:
    each process embeds a contiguous shard (no padding: every item once), gathered in rank order. A video set
    sampled densely gives each tracklet its clips (a varying number): one tracklet per step, its clips' features
    averaged (models.reid.tracklet_feature); sampled evenly, one clip each, batched."""
    from models.reid import tracklet_feature
    model.eval()
    video = args.backbone == "reid_video"
    dense = video and args.test_sampling == "dense"
    loader = DataLoader(dataset, batch_size=1 if dense else args.batch_size,
                        sampler=ContiguousShardSampler(dataset, ctx.world_size, ctx.rank),
                        **loader_options(args.workers, ctx.device, args.seed))
    features, pids, camids, start, seen = [], [], [], time.time(), 0
    for i, (inputs, pid, camid) in enumerate(loader):
        inputs = inputs.to(ctx.device, non_blocking=True)
        with autocast(ctx.device, args.amp):
            if dense:
                feature = tracklet_feature(model, inputs[0])[None]
            else:  # a video item is (clips, T, 3, H, W): one clip when sampled evenly
                feature = model(inputs.flatten(0, 1) if video else inputs)
        features.append(feature.float().cpu())
        pids.append(pid), camids.append(camid)
        seen += len(pid)
        if i % args.print_freq == 0 or i == len(loader) - 1:
            elapsed = time.time() - start
            log.info(f"Features [{what}] [{i + 1}/{len(loader)}]  {seen * ctx.world_size / max(elapsed, 1e-9):.1f} "
                     f"{'tracklets' if video else 'img'}/s  "
                     f"eta {format_seconds(elapsed / (i + 1) * (len(loader) - i - 1))}")
    empty = torch.zeros(0, dtype=torch.long)
    mine = (torch.cat(features) if features else None, torch.cat(pids) if pids else empty,
            torch.cat(camids) if camids else empty)
    shards = [shard for shard in gather_objects(ctx, mine) if shard[0] is not None]
    return tuple(torch.cat(parts) for parts in zip(*shards))
