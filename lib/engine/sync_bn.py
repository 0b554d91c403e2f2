"""--sync-bn: BatchNorm statistics over the global batch of all processes.

On CUDA this is torch's SyncBatchNorm. torch's SyncBatchNorm refuses CPU tensors, so for CPU (gloo) runs this
module provides an equivalent: the per-channel sums of x and x^2 and the count are all-reduced (differentiably,
so gradients flow through the global statistics as in SyncBatchNorm), then normalization proceeds as usual.
Same parameter and buffer names as nn.BatchNorm2d, so checkpoints are unaffected.
"""
import torch
import torch.distributed as dist
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose backward is the sum of the gradients over processes: each process's statistics
    feed every process's output, so each input's gradient collects the contributions of all processes."""

    @staticmethod
    def forward(ctx, tensor):
        total = tensor.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx, grad):
        total = grad.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total


def _global_batch_norm(bn, x):
    """Training-mode batch norm of x (N, C, ...) with the statistics of every process's batch (gloo all_reduce)."""
    channels = x.size(1)
    dims = [0] + list(range(2, x.dim()))
    x32 = x.float()
    local = torch.cat([x32.sum(dim=dims), (x32 * x32).sum(dim=dims), x32.new_tensor([x.numel() / channels])])
    total = _AllReduceSum.apply(local)
    count = total[-1]
    mean = total[:channels] / count
    var = (total[channels:2 * channels] / count - mean * mean).clamp_min(0)
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            unbiased = var * count / (count - 1).clamp_min(1)
            bn.running_mean.mul_(1 - momentum).add_(mean.to(bn.running_mean.dtype), alpha=momentum)
            bn.running_var.mul_(1 - momentum).add_(unbiased.to(bn.running_var.dtype), alpha=momentum)
    shape = (1, channels) + (1,) * (x.dim() - 2)
    y = (x32 - mean.view(shape)) * torch.rsqrt(var.view(shape) + bn.eps)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    return y.to(x.dtype)


def _syncing(bn):
    return bn.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class CPUSyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are over every process's batch (gloo all_reduce)."""

    def forward(self, x):
        return _global_batch_norm(self, x) if _syncing(self) else super().forward(x)


class CPUSyncBatchNorm3d(nn.BatchNorm3d):
    """BatchNorm3d (video models) whose training statistics are over every process's batch (gloo all_reduce)."""

    def forward(self, x):
        return _global_batch_norm(self, x) if _syncing(self) else super().forward(x)


CPU_SYNC_CLASSES = {nn.BatchNorm2d: CPUSyncBatchNorm2d, nn.BatchNorm3d: CPUSyncBatchNorm3d}


def _convert_cpu(module):
    converted = module
    synced = next((cls for base, cls in CPU_SYNC_CLASSES.items() if isinstance(module, base)), None)
    if synced is not None and not isinstance(module, synced):
        converted = synced(module.num_features, module.eps, module.momentum, module.affine,
                           module.track_running_stats)
        if module.affine:  # the same Parameter objects: an optimizer built earlier still sees them
            converted.weight, converted.bias = module.weight, module.bias
        converted.running_mean, converted.running_var = module.running_mean, module.running_var
        converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
    for name, child in module.named_children():
        converted.add_module(name, _convert_cpu(child))
    return converted


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d / 3d of model as a synchronized one: torch's SyncBatchNorm on CUDA, CPUSyncBatchNorm2d /
    3d else."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_cpu(model)

