"""The nonlocal "stage" shared by every stage-based block (docs/blocks.md; the spectral family: docs/spectral.md).

A stage works on inputs with `dim` = 1, 2 or 3 spatial dims, (B, C, L), (B, C, H, W) or (B, C, T, H, W): its 1x1
convolutions and BatchNorm are those of that dim and the affinity is over all N = L, H W or T H W positions.
"""
import math

import torch
import torch.nn as nn

from .affinity import (
    AFFINITY_PATHS,
    build_affinity,
    exporting,
    full_precision,
    mix,
    mix_transposed,
    upcast,
    uses_factorized,
)
from .errors import ConfigError, check_dim, check_optional_bool, check_positive_int
from .pointwise import MAX_PRODUCT_CHANNELS, project

CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
BATCH_NORMS = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
INPUT_LAYOUTS = {1: "(B, C, L)", 2: "(B, C, H, W)", 3: "(B, C, T, H, W)"}


def conv1x1(dim, in_channels, out_channels, device=None, dtype=None):
    """A bias-free 1x1 convolution of `dim` spatial dims (its weight is (out, in, 1, ..., 1))."""
    return CONVS[dim](in_channels, out_channels, kernel_size=1, bias=False, device=device, dtype=dtype)


def pointwise(conv, x):
    """A 1x1 convolution (Conv1d/2d/3d) of x (B, C, *spatial) -> (B, C_out, *spatial): one batched matrix product
    where that is the faster kernel (see `lib.pointwise.project`), else the module's own convolution."""
    wide = max(conv.in_channels, conv.out_channels) > MAX_PRODUCT_CHANNELS
    if x.device.type != "cpu" or not x.is_contiguous() or wide:
        return conv(x)
    return project(x, conv.weight.flatten(1), conv.bias).reshape(x.shape[0], -1, *x.shape[2:])


class NonlocalStage(nn.Module):
    """Two 1x1 convs `t`, `p` build ONE affinity A from the stage input; `stage_num` units share it.

    Subclasses choose the unit (`unit_cls`) and their default affinity (`default_sys`, `default_norm`,
    `relu_kernel`). Parameter names (`t`, `p`, `stages.<k>.*`) are the reference's, so its state_dicts load.

    Args:
        inplanes: C, channels in and out.
        planes: C', channels of theta, phi and g (the reference uses int(C / div)).
        stage_num: number of units applied one after another with the same A.
        is_sys, is_norm: affinity options (docs/blocks.md); None = the block's default.
        zero_init: zero the units' output BN weight, so the stage starts as the identity.
        output_relu: Y = X + relu(BN(pre)) (True) or X + BN(pre) (False); None = the unit's default (True for
            every unit but gsnl's). False gives the earlier release's space-time units (docs/blocks.md).
        affinity_path: 'auto', 'dense' or 'factorized' (how A Z is computed; same numbers).
        dim: spatial dims of the input: 1 (B, C, L), 2 (B, C, H, W) or 3 (B, C, T, H, W).
        device, dtype: where and in which dtype the parameters are created (as for torch.nn layers).
        unit_kwargs: extra arguments of the unit (e.g. `order` of cheb and arma), passed by subclasses.
    """

    unit_cls = None
    default_sys = False
    default_norm = False
    relu_kernel = False  # the plain affinity is relu(theta) relu(phi)^T without softmax (A2)

    def __init__(self, inplanes, planes, stage_num=1, is_sys=None, is_norm=None, zero_init=False,
                 affinity_path="auto", dim=2, output_relu=None, device=None, dtype=None, **unit_kwargs):
        super().__init__()
        check_positive_int("inplanes (the block's channels C)", inplanes)
        check_positive_int("planes (the inner width C')", planes)
        check_positive_int("stage_num", stage_num)
        check_optional_bool("is_sys", is_sys)
        check_optional_bool("is_norm", is_norm)
        check_optional_bool("output_relu", output_relu)
        check_dim(dim)
        self.dim = dim
        self.is_sys = self.default_sys if is_sys is None else is_sys
        self.is_norm = self.default_norm if is_norm is None else is_norm
        self.affinity_path = affinity_path
        self.zero_init = zero_init
        self.t = conv1x1(dim, inplanes, planes, device=device, dtype=dtype)
        self.p = conv1x1(dim, inplanes, planes, device=device, dtype=dtype)
        self.stages = nn.Sequential(*[self.unit_cls(inplanes, planes, dim=dim, device=device, dtype=dtype,
                                                    **unit_kwargs)
                                      for _ in range(stage_num)])
        if output_relu is not None:  # an instance attribute shadows the unit class's default
            for unit in self.stages:
                unit.output_relu = output_relu
        self.output_relu = self.stages[0].output_relu
        self._zero_init()

    def _zero_init(self):
        if self.zero_init:
            for unit in self.stages:
                nn.init.zeros_(unit.bn.weight)

    def reset_parameters(self):
        """Initialize every parameter and buffer as the constructor does (e.g. after building on 'meta' and
        `to_empty`); with the same RNG state it gives the same weights."""
        reset_children(self)
        self._zero_init()

    @property
    def affinity_path(self):
        return self._affinity_path

    @affinity_path.setter
    def affinity_path(self, path):
        # ConfigError (a ValueError) as the README promises for every bad block argument.
        if path not in AFFINITY_PATHS:
            raise ConfigError(f"affinity_path must be one of {', '.join(AFFINITY_PATHS)}, got {path!r}")
        if path == "factorized" and not (self.is_norm or self.relu_kernel):
            raise ConfigError(f"{type(self).__name__} with a softmax affinity has no factorized form (use "
                              f"affinity_path 'auto' or 'dense', or is_norm=True)")
        self._affinity_path = path

    def affinity(self, x):
        """The affinity operator of input x (B, C, *spatial); `.dense()` gives A (B, N, N), e.g. to visualize."""
        return build_affinity(pointwise(self.t, x), pointwise(self.p, x), self.is_sys, self.is_norm,
                              self.relu_kernel, self.affinity_path)

    def check_input(self, x):
        """One clear line for an input this block cannot take (instead of a reshape or index error inside)."""
        channels = self.t.in_channels
        if x.dim() != self.dim + 2:
            raise ConfigError(f"{type(self).__name__} with dim={self.dim} expects a {self.dim + 2}-D input "
                              f"{INPUT_LAYOUTS[self.dim]}, got shape {tuple(x.shape)}")
        if x.shape[1] != channels:
            raise ConfigError(f"{type(self).__name__} was built for {channels} input channels, got "
                              f"{x.shape[1]} (input shape {tuple(x.shape)})")
        if x.numel() == 0:  # else a reshape error deep inside the affinity
            raise ConfigError(f"{type(self).__name__} got an empty input (shape {tuple(x.shape)}): every "
                              f"dimension must be at least 1")

    def forward(self, x):  # (B, C, *spatial) -> (B, C, *spatial)
        self.check_input(x)
        if self._fusable(x):
            return self._fused_forward(x)
        att = self.affinity(x)
        for unit in self.stages:
            x = unit(x, att)
        return x

    def filter_response(self, lam):
        """Each unit's graph-filter response at the Laplacian frequencies lam (L,) in [0, 2]:
        (stage_num, L, C, Cz), Cz = channels of the unit's Z (docs/spectral.md)."""
        return torch.stack([unit.filter_response(lam) for unit in self.stages])

    def _fusable(self, x):
        """Whether `FusedReluDotStage` applies: one unit with a fused form, a plain BatchNorm of the block's dim
        (a BN replaced by another module, e.g. SyncBatchNorm for --sync-bn, keeps its own forward), a factorized
        affinity, and N >= 4C'. The fused form folds W2 into R = (Z Fs^T) S^T (C C' 2C' multiply-adds per sample
        instead of C C' N) and recomputes two products in the backward; measured on CPU it is 10-15% faster than
        the module path at N = 8C' and 64C' (PreResNet stages 2 and 1), but 10-30% slower at N = 2C' (stage 3).
        When the forward is exported (torch.export, ONNX, jit.trace) the module path runs: the same math, plain
        operations."""
        unit, positions, planes = self.stages[0], math.prod(x.shape[2:]), self.t.out_channels
        # the fused kernel updates the running statistics in place, in the dtype it computes in: not for a
        # block whose BN is kept in bf16 / fp16 (built or converted so)
        statistics = [t for t in (unit.bn.running_mean, unit.bn.running_var) if t is not None]
        return (not exporting() and len(self.stages) == 1 and unit.fused_weights() is not None
                and type(unit.bn) is BATCH_NORMS[self.dim] and x.numel() > 0 and positions >= 4 * planes
                and all(t.dtype in (torch.float32, torch.float64) for t in statistics)
                and uses_factorized(self.affinity_path, self.is_norm, self.relu_kernel, positions, planes))

    def _fused_forward(self, x):
        unit = self.stages[0]
        b, c, positions = x.shape[0], x.shape[1], math.prod(x.shape[2:])
        if unit.bn.training and b * positions == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
        w_1, w_2 = unit.fused_weights()
        weights = torch.cat([unit.g.weight, self.t.weight, self.p.weight]).flatten(1)  # (3C', C)
        running_mean, running_var, use_batch_stats, momentum = batch_norm_arguments(unit.bn)
        with full_precision(x.device.type):  # the whole stage in float32 under autocast (see lib/affinity.py)
            dtype = upcast(x).dtype
            cast = [None if v is None else v.to(dtype) for v in (weights, w_1, w_2, unit.bn.weight, unit.bn.bias)]
            x_4d = x.to(dtype).contiguous().reshape(b, c, positions, 1)  # the fused kernel's (B, C, N, 1) view
            y = fused_relu_dot_stage(x_4d, *cast, running_mean, running_var, use_batch_stats, momentum,
                                     unit.bn.eps, self.is_sys, self.is_norm, unit.output_relu).reshape(x.shape)
        if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            y = y.contiguous(memory_format=torch.channels_last)  # hand back the layout the caller uses
        return y.to(x.dtype)

    def extra_repr(self):
        dim = "" if self.dim == 2 else f", dim={self.dim}"
        relu = "" if self.output_relu == self.unit_cls.output_relu else f", output_relu={self.output_relu}"
        return f"is_sys={self.is_sys}, is_norm={self.is_norm}, affinity_path={self.affinity_path!r}{dim}{relu}"


class NonlocalUnit(nn.Module):
    """Base of the units: g : C -> C' and the output BatchNorm, of the stage's dim.

    A unit computes Y = X + act(BN(pre)) with pre = `graph_filter(att, Z)`, a graph filter of the stage's
    affinity A applied to Z = g(X) (docs/spectral.md); `filter_response(lam)` is that filter's frequency
    response (the linear part: any ReLU inside the filter removed). `aggregate` gives A Z.
    """

    output_relu = True  # Y = X + relu(BN(pre)); gsnl has no ReLU there. The stage's output_relu overrides it.

    def __init__(self, inplanes, planes, dim=2, z_planes=None, device=None, dtype=None):
        super().__init__()
        self.dim = dim
        self.g = conv1x1(dim, inplanes, planes if z_planes is None else z_planes, device=device, dtype=dtype)
        self.bn = BATCH_NORMS[dim](inplanes, device=device, dtype=dtype)

    def conv(self, in_channels, out_channels):
        """A 1x1 convolution of the unit's dim, created on g's device and dtype."""
        weight = self.g.weight
        return conv1x1(self.dim, in_channels, out_channels, device=weight.device, dtype=weight.dtype)

    def fused_weights(self):
        """(W1, W2) (C, C') with pre-BN = W1 Z + W2 (A Z) (W1 None: no Z term), or None if the unit has other
        terms; `FusedReluDotStage` then computes the stage with one unit in one step."""
        return None

    def forward(self, x, att):  # x (B, C, *spatial)
        return self.residual(x, self.graph_filter(att, pointwise(self.g, x)))

    def residual(self, x, pre):
        """Y = X + act(BN(pre)), act = relu or the identity (`output_relu`)."""
        out = self.bn(pre)
        return x + (torch.relu(out) if self.output_relu else out)

    def graph_filter(self, att, z, linear=False):
        """pre-BN (B, C, *spatial) from Z (B, Cz, *spatial); linear=True drops ReLUs inside the filter (arma)."""
        raise NotImplementedError

    def filter_response(self, lam):
        """(L, C, Cz): the matrix the filter applies to the part of Z on an eigenvector of L = I - A with
        eigenvalue lam (docs/spectral.md)."""
        raise NotImplementedError

    @staticmethod
    def aggregate(att, z):  # z (B, C', *spatial) -> A Z (B, C', *spatial)
        return att.apply_channels_first(z.flatten(2)).reshape(z.shape).to(z.dtype)


def reset_children(module):
    """Call reset_parameters() of the submodules below `module` that have one (convolutions, norms, blocks; not
    again inside those), in construction order, so the same RNG state draws the same weights as the constructor."""
    for child in module.children():
        if hasattr(child, "reset_parameters"):
            child.reset_parameters()
        else:
            reset_children(child)


def matrix(conv):
    """The (out, in) matrix of a 1x1 convolution of any dim."""
    return conv.weight.flatten(1)


def frequencies(lam, like):
    """lam as a 1-D tensor of like's dtype and device, shaped (L, 1, 1) to scale (C, Cz) matrices."""
    lam = torch.as_tensor(lam, dtype=like.dtype, device=like.device)
    if lam.dim() != 1:
        raise ValueError(f"filter_response expects a 1-D tensor of frequencies, got shape {tuple(lam.shape)}")
    return lam.reshape(-1, 1, 1)


def batch_norm_arguments(bn):
    """(running_mean, running_var, use_batch_stats, momentum) as nn.BatchNorm's forward would pass them to
    F.batch_norm, counting the batch in num_batches_tracked as it does."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    keep_running = not bn.training or bn.track_running_stats
    return (bn.running_mean if keep_running else None, bn.running_var if keep_running else None,
            use_batch_stats, momentum)


class FusedReluDotStage(torch.autograd.Function):
    """Y = X + relu(BN(W1 Z + W2 (A Z))) (or X + BN(.) without the output ReLU) for a one-unit stage with a
    factorized ReLU-dot affinity.

    The same numbers as the module-by-module path, with about a quarter of its memory kept for the backward
    and fewer operations: it saves only X and (B, N)- or (B, C, 3C')-sized tensors and recomputes [Z; F] and
    pre from X in the backward (two products) instead of keeping ~5 feature maps alive; in a PreResNet-20
    training step that is the difference between +5% and +26% peak memory. tests/test_blocks.py checks the
    hand-written backward against autograd on the direct formulas and against the dense path.

    Per sample, channel-first: [Z; F] = [W_g X; relu(W_tp X)] (3C', N) from one product; S, q = S (F 1),
    d = q^T F and s = d^(-1/2) as in lib/affinity.py (without normalization s = 1); Fs = F s (per position).
    Then A Z = ((Z Fs^T) S^T) Fs, so with R = (Z Fs^T) S^T (C', 2C') and V = W2 R (C, 2C'):
        pre = W1 Z + W2 (A Z) = [W1 | V] [Z; Fs]       (one product; W1 = 0 for A2's unit).
    """

    @staticmethod
    def forward(ctx, x, w_gtp, w_1, w_2, bn_weight, bn_bias, running_mean, running_var, use_batch_stats,
                momentum, eps, is_sys, normalize, relu=True):
        b, c, h, w = x.shape
        x_flat = x.reshape(b, c, h * w)
        features, z, factors = _features(x_flat, w_gtp)
        q = scale = None
        if normalize:
            q = mix(factors.sum(dim=2), is_sys)  # (B, 2C')
            scale = torch.bmm(q.unsqueeze(1), factors).rsqrt_()  # (B, 1, N); d = 0 gives inf, set to 0 next
            torch.nan_to_num_(scale, nan=float("nan"), posinf=0.0, neginf=0.0)
            factors.mul_(scale)  # features is now [Z; Fs]
        mixed = mix(torch.bmm(z, factors.transpose(1, 2)), is_sys)  # R (B, C', 2C')
        pre = torch.bmm(_unit_weights(w_1, w_2, mixed), features)
        out, mean, invstd = _batch_norm(pre, bn_weight, bn_bias, running_mean, running_var, use_batch_stats,
                                        momentum, eps)
        ctx.save_for_backward(x, w_gtp, w_1, w_2, bn_weight, bn_bias, q, scale, mixed, mean, invstd)
        ctx.running = (running_mean, running_var)  # read by the backward only in eval mode, never changed there
        ctx.options = (use_batch_stats, eps, is_sys, relu)
        return (out.relu_() if relu else out).add_(x_flat).reshape(b, c, h, w)

    @staticmethod
    def backward(ctx, grad_y):
        x, w_gtp, w_1, w_2, bn_weight, bn_bias, q, scale, mixed, mean, invstd = ctx.saved_tensors
        use_batch_stats, eps, is_sys, relu = ctx.options
        b, c, h, w = x.shape
        k = w_gtp.shape[0] // 3
        x_flat, grad_y = x.reshape(b, c, h * w), grad_y.reshape(b, c, h * w)
        features, z, factors = _features(x_flat, w_gtp)  # recomputed: [Z; F]
        scaled = features
        if scale is not None:  # [Z; Fs] beside [Z; F]: the backward needs both (Z copied, Fs = F s in one pass)
            scaled = torch.empty_like(features)
            scaled[:, :k].copy_(z)
            torch.mul(factors, scale, out=scaled[:, k:])
        weights = _unit_weights(w_1, w_2, mixed)
        pre = torch.bmm(weights, scaled)
        if use_batch_stats:  # centered in place as the forward did it (the same operation, the same bits), so
            pre.sub_(mean.unsqueeze(1))  # BN(pre) = BN of the centered values with mean 0
            mean = torch.zeros_like(mean)
        grad_out = grad_y
        if relu:
            grad_out = _relu_backward(grad_y, pre, bn_weight, bn_bias, *ctx.running, mean, invstd, use_batch_stats,
                                      eps)
        grad_pre, grad_bn_weight, grad_bn_bias = torch.ops.aten.native_batch_norm_backward(
            grad_out, pre, bn_weight, *ctx.running, mean, invstd, use_batch_stats, eps,
            [True, bn_weight is not None, bn_bias is not None])
        del pre, grad_out
        grad_weights = torch.bmm(grad_pre, scaled.transpose(1, 2))  # dL/d[W1 | V] (B, C, 3C')
        grad_features = torch.bmm(weights.transpose(1, 2), grad_pre)  # dL/d[Z; Fs]; dL/d[Z; W_tp X] below
        del grad_pre
        grad_v = grad_weights[:, :, k:]
        grad_w_1 = None if w_1 is None else grad_weights[:, :, :k].sum(0)
        grad_w_2 = torch.bmm(grad_v, mixed.transpose(1, 2)).sum(0)  # V = W2 R
        grad_zf = mix_transposed(torch.bmm(w_2.t().expand(b, -1, -1), grad_v), is_sys)  # dL/d(Z Fs^T)
        grad_z, grad_f = grad_features[:, :k], grad_features[:, k:]  # views: updated in place
        grad_z.baddbmm_(grad_zf, scaled[:, k:])  # in place: no temporary, one pass
        grad_f.baddbmm_(grad_zf.transpose(1, 2), z)  # now all of dL/dFs
        if scale is not None:  # Fs = F s, s = d^(-1/2), d = q^T F, q = S (F 1)
            grad_d = (grad_f * factors).sum(1, keepdim=True).mul_(scale.pow(3))  # times -1/2, applied below
            grad_q = torch.bmm(factors, grad_d.transpose(1, 2))  # (B, 2C', 1)
            # dL/dF = dL/dFs s - (q d_n + (S grad_q)) / 2: both rank-1 terms in one in-place rank-2 product
            left = torch.cat([q.unsqueeze(2), mix_transposed(grad_q.squeeze(2), is_sys).unsqueeze(2)], dim=2)
            right = torch.cat([grad_d, torch.ones_like(grad_d)], dim=1)  # (B, 2, N)
            grad_f.mul_(scale).baddbmm_(left, right, alpha=-0.5)
        torch.ops.aten.threshold_backward.grad_input(grad_f, factors, 0, grad_input=grad_f)  # the ReLU, in place
        grad_x = torch.baddbmm(grad_y, w_gtp.t().expand(b, -1, -1), grad_features).reshape(b, c, h, w)
        grad_w_gtp = torch.bmm(grad_features, x_flat.transpose(1, 2)).sum(0)
        return (grad_x, grad_w_gtp, grad_w_1, grad_w_2, grad_bn_weight, grad_bn_bias) + (None,) * 8


def _features(x_flat, w_gtp):
    """[Z; F] = [W_g X; relu(W_tp X)] (B, 3C', N) from one product, and its two parts (views)."""
    k = w_gtp.shape[0] // 3
    features = torch.bmm(w_gtp.expand(x_flat.shape[0], -1, -1), x_flat)
    return features, features[:, :k], features[:, k:].relu_()


def _batch_norm(pre, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps):
    """(BN(pre), mean, invstd) as torch.native_batch_norm gives them, for pre (B, C, N) contiguous, running
    statistics updated in place the same way (the unbiased variance, `momentum`).

    In training the statistics come from per-sample sums over N (contiguous, so each is one cheap pass), pre
    centered IN PLACE (the caller does not need pre again; the backward recomputes it and centers it the same way)
    and per-sample norms of the centered values (one pass, no temporary); the output is centered * a + bias,
    a = invstd * weight, in one pass (`_affine`, which `_relu_backward` calls too, so the ReLU's mask there matches
    the forward to the bit): four passes over (B, C, N) and no temporary of that size, where the native kernel
    takes about twice the time at (128, 16, 1024) (thread CPU time, one thread)."""
    if not use_batch_stats:
        return torch.native_batch_norm(pre, weight, bias, running_mean, running_var, False, momentum, eps)
    count = pre.shape[0] * pre.shape[2]
    mean = pre.sum(dim=2).sum(dim=0).div_(count)  # (C,)
    centered = pre.sub_(mean.unsqueeze(1))  # in place: pre itself is not needed again
    # biased, as BN normalizes with: per-sample norms over N (one pass, no temporary), squared and summed
    var = torch.linalg.vector_norm(centered, dim=2).square_().sum(dim=0).div_(count)
    invstd = (var + eps).rsqrt_()
    with torch.no_grad():
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
        if running_var is not None:
            unbiased = var * (count / (count - 1)) if count > 1 else var
            running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
    return _affine(centered, weight, bias, torch.zeros_like(mean), invstd), mean, invstd


def _affine(pre, weight, bias, mean, invstd):
    """BN(pre) as the CPU kernel forms it, pre * a + (bias - mean * a) with a = invstd * weight, in one pass; the
    forward and `_relu_backward` both call this, so the ReLU's mask in the backward matches the forward's."""
    scale = invstd if weight is None else invstd * weight
    shift = -mean * scale if bias is None else bias - mean * scale
    return torch.addcmul(shift.unsqueeze(1), pre, scale.unsqueeze(1))


def _relu_backward(grad_y, pre, weight, bias, running_mean, running_var, mean, invstd, use_batch_stats, eps):
    """dL/dBN(pre) from dL/dY: zero where BN(pre) <= 0. BN(pre) is recomputed as the CPU kernel forms it,
    pre * a + (bias - mean * a) with a = invstd * weight (equal up to rounding, which can only matter where
    BN(pre) is 0 to the last bit); keeping a 1-byte mask instead would cost 1/4 of a feature map."""
    if not use_batch_stats:
        mean, invstd = running_mean, (running_var + eps).rsqrt()
    out = _affine(pre, weight, bias, mean, invstd)
    return torch.ops.aten.threshold_backward.grad_input(grad_y, out, 0, grad_input=out)


def _unit_weights(w_1, w_2, mixed):
    """[W1 | W2 R] (B, C, 3C'), so that pre = [W1 | W2 R] [Z; Fs]; W1 = 0 for A2's unit (no Z term)."""
    b, k = mixed.shape[:2]
    v = torch.bmm(w_2.expand(b, -1, -1), mixed)  # (B, C, 2C')
    w_1 = torch.zeros_like(w_2) if w_1 is None else w_1
    return torch.cat([w_1.expand(b, -1, -1), v], dim=2)


def fused_relu_dot_stage(x, w_gtp, w_1, w_2, bn_weight, bn_bias, running_mean, running_var, use_batch_stats,
                         momentum, eps, is_sys, normalize, relu=True):
    """See `FusedReluDotStage`; x (B, C, H, W) NCHW-contiguous, w_gtp = [W_g; W_t; W_p] (3C', C); relu: the
    output ReLU."""
    return FusedReluDotStage.apply(x, w_gtp, w_1, w_2, bn_weight, bn_bias, running_mean, running_var,
                                   use_batch_stats, momentum, eps, is_sys, normalize, relu)
