"""What train_det.py builds from its flags: the data (aspect-ratio grouped training batches, a contiguous shard of
the validation images per process), the lr schedule with its warm-up by iterations, and batches on the device."""
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from lib.data import loader_options
from lib.data.samplers import BatchSkipInSamples, ContiguousShardSampler, SeededAugmentation
from lib.engine.distributed import local_main_first
from lib.engine.schedule import WarmupStepSchedule


def build_data(args, ctx):
    """The data dict of the run (lib/engine/__init__.py): the sets, their loaders, the training sampler and the
    label -> category id map. Local rank 0 first: the fake set is written once per node."""
    from lib.data.coco import build_detection_datasets, collate_detection
    from lib.data.grouped_sampler import GroupedBatchSampler, aspect_ratio_groups
    train_set, val_set, num_classes = local_main_first(ctx, lambda: build_detection_datasets(
        args.dataset, data_dir=args.data_dir, train_ann=args.train_ann, train_images=args.train_images,
        val_ann=args.val_ann, val_images=args.val_images, hflip=args.hflip, masks=args.model == "maskrcnn",
        labels_as_ids=args.labels_as_ids))
    groups = aspect_ratio_groups(train_set.aspect_ratios(), args.aspect_ratio_group_factor)
    batches = GroupedBatchSampler(train_set, groups, args.batch_size, num_replicas=ctx.world_size, rank=ctx.rank,
                                  seed=args.seed)
    train_loader = DataLoader(SeededAugmentation(train_set), batch_sampler=batches, collate_fn=collate_detection,
                              **loader_options(args.workers, ctx.device, args.seed))
    val_loader = DataLoader(val_set, batch_size=args.batch_size, collate_fn=collate_detection,
                            sampler=ContiguousShardSampler(val_set, ctx.world_size, ctx.rank),
                            **loader_options(args.workers, ctx.device, args.seed))
    return dict(train_set=train_set, val_set=val_set, num_classes=num_classes, train_loader=train_loader,
                val_loader=val_loader, train_sampler=BatchSkipInSamples(batches, args.batch_size))


@dataclass(frozen=True)
class IterationWarmup:
    """The epochs' step schedule (lr_at(epoch), as the run loop sets it) with torchvision's linear warm-up by
    iterations on top: iteration t < warmup_iters of the run trains at lr_at(epoch) x (f + (1 - f) t / warmup_iters),
    f = warmup_factor. A pure function of (epoch, iteration), so a resume inside the warm-up is exact."""
    steps: WarmupStepSchedule
    warmup_iters: int
    warmup_factor: float

    @property
    def base_lr(self):
        return self.steps.base_lr

    def lr_at(self, epoch):
        return self.steps.lr_at(epoch)

    def lr_in_epoch(self, epoch, iteration, iterations_per_epoch):
        step = epoch * iterations_per_epoch + iteration
        factor = 1.0
        if step < self.warmup_iters:
            factor = self.warmup_factor + (1 - self.warmup_factor) * step / self.warmup_iters
        return self.lr_at(epoch) * factor

    def state_dict(self):
        return dict(self.steps.state_dict(), warmup_iters=self.warmup_iters, warmup_factor=self.warmup_factor)


def share_buffers(model, ctx):
    """Every process's buffers (BatchNorm running statistics) set to rank 0's, which the checkpoint holds. Without
    --sync-bn each process updates them from its own batches after DDP's last broadcast, so the shards would be
    evaluated by slightly different models; DDP itself broadcasts rank 0's buffers at every training forward, so
    training is unchanged."""
    if ctx.distributed:
        import torch.distributed as dist
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def to_device(images, targets, ctx):
    images = [image.to(ctx.device, non_blocking=True) for image in images]
    # image_id is a plain int (the COCO id), the rest tensors
    targets = [{key: value.to(ctx.device, non_blocking=True) if torch.is_tensor(value) else value
                for key, value in target.items()} for target in targets]
    return images, targets
