"""The nonlocal "stage" shared by SNL, NL, A2, NS and DNL (design.md section 1)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from lib.affinity import (AFFINITY_PATHS, build_affinity, full_precision, inverse_sqrt_degree, mix,
                          mix_transposed, upcast, uses_factorized)


def pointwise(conv, x):
    """A bias-free 1x1 convolution as one batched matrix product on the (B, C, N) view of x.

    On CPU, oneDNN's 1x1 convolution of these thin maps (C <= 64, 32x32) costs several times a matrix product,
    forward and backward. Inputs that are not NCHW-contiguous (e.g. channels_last) keep the convolution.
    """
    if not x.is_contiguous() or conv.bias is not None:
        return conv(x)
    b, c, h, w = x.shape
    weight = conv.weight.reshape(conv.out_channels, c)
    return torch.bmm(weight.expand(b, -1, -1), x.reshape(b, c, h * w)).reshape(b, -1, h, w)


class NonlocalStage(nn.Module):
    """Two 1x1 convs `t`, `p` build ONE affinity A from the stage input; `stage_num` units share it.

    Subclasses choose the unit (`unit_cls`) and their default affinity (`default_sys`, `default_norm`,
    `relu_kernel`). Parameter names (`t`, `p`, `stages.<k>.*`) are the reference's, so its state_dicts load.

    Args:
        inplanes: C, channels in and out.
        planes: C', channels of theta, phi and g (the reference uses int(C / div)).
        stage_num: number of units applied one after another with the same A.
        is_sys, is_norm: affinity options (design.md section 1); None = the block's default.
        zero_init: zero the units' output BN weight, so the stage starts as the identity.
        affinity_path: 'auto', 'dense' or 'factorized' (how A Z is computed; same numbers).
    """

    unit_cls = None
    default_sys = False
    default_norm = False
    relu_kernel = False  # the plain affinity is relu(theta) relu(phi)^T without softmax (A2)

    def __init__(self, inplanes, planes, stage_num=1, is_sys=None, is_norm=None, zero_init=False,
                 affinity_path="auto"):
        super().__init__()
        if stage_num < 1:
            raise ValueError(f"stage_num must be at least 1, got {stage_num}")
        self.is_sys = self.default_sys if is_sys is None else bool(is_sys)
        self.is_norm = self.default_norm if is_norm is None else bool(is_norm)
        self.affinity_path = affinity_path
        self.t = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.p = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.stages = nn.Sequential(*[self.unit_cls(inplanes, planes) for _ in range(stage_num)])
        if zero_init:
            for unit in self.stages:
                nn.init.zeros_(unit.bn.weight)

    @property
    def affinity_path(self):
        return self._affinity_path

    @affinity_path.setter
    def affinity_path(self, path):
        if path not in AFFINITY_PATHS:
            raise ValueError(f"affinity_path must be one of {AFFINITY_PATHS}, got {path!r}")
        if path == "factorized" and not (self.is_norm or self.relu_kernel):
            raise ValueError(f"{type(self).__name__} with a softmax affinity has no factorized form")
        self._affinity_path = path

    def affinity(self, x):
        """The affinity operator of input x (B, C, H, W); `.dense()` gives A (B, N, N), e.g. to visualize."""
        return build_affinity(pointwise(self.t, x), pointwise(self.p, x), self.is_sys, self.is_norm,
                              self.relu_kernel, self.affinity_path)

    def forward(self, x):  # (B, C, H, W) -> (B, C, H, W)
        if self._fusable(x):
            return self._fused_forward(x)
        att = self.affinity(x)
        for unit in self.stages:
            x = unit(x, att)
        return x

    def _fusable(self, x):
        """One unit, a factorized affinity and a unit that has a fused form: `FusedReluDotStage` applies."""
        planes = self.t.out_channels
        return (len(self.stages) == 1 and self.stages[0].fused_weights() is not None and x.numel() > 0
                and uses_factorized(self.affinity_path, self.is_norm, self.relu_kernel, x.shape[2] * x.shape[3], planes))

    def _fused_forward(self, x):
        unit = self.stages[0]
        if unit.bn.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
        w_1, w_2 = unit.fused_weights()
        weights = torch.cat([self.t.weight, self.p.weight, unit.g.weight]).flatten(1)  # (3C', C)
        running_mean, running_var, use_batch_stats, momentum = batch_norm_arguments(unit.bn)
        with full_precision(x.device.type):  # the whole stage in float32 under autocast (see lib/affinity.py)
            dtype = upcast(x).dtype
            cast = [None if v is None else v.to(dtype) for v in (weights, w_1, w_2, unit.bn.weight, unit.bn.bias)]
            y = fused_relu_dot_stage(x.to(dtype).contiguous(), *cast, running_mean, running_var,
                                     use_batch_stats, momentum, unit.bn.eps, self.is_sys, self.is_norm)
        return y.to(x.dtype)

    def extra_repr(self):
        return f"is_sys={self.is_sys}, is_norm={self.is_norm}, affinity_path={self.affinity_path!r}"


class NonlocalUnit(nn.Module):
    """Base of the units: g : C -> C' and the output BatchNorm; `aggregate` gives A Z as (B, C', H, W)."""

    def __init__(self, inplanes, planes):
        super().__init__()
        self.g = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(inplanes)

    def fused_weights(self):
        """(W1, W2) (C, C') with pre-BN = W1 Z + W2 (A Z) (W1 None: no Z term), or None if the unit has other
        terms; `FusedReluDotStage` then computes the stage with one unit in one step."""
        return None

    @staticmethod
    def aggregate(att, z):  # z (B, C', H, W) -> A Z (B, C', H, W)
        b, c, h, w = z.shape
        return att.apply_channels_first(z.reshape(b, c, h * w)).reshape(b, c, h, w).to(z.dtype)


def batch_norm_arguments(bn):
    """(running_mean, running_var, use_batch_stats, momentum) as nn.BatchNorm2d's forward would pass them to
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
    """Y = X + relu(BN(W1 Z + W2 (A Z))) for a one-unit stage with a factorized ReLU-dot affinity.

    Same numbers as the module-by-module path, at a fraction of its time and memory: it saves only X, the
    (B, N) scales s, the (B, C', 2C') matrix R = (s Z^T F^T) S^T, the BN statistics and a bool mask (2 bytes
    per 8 of a float map), and recomputes F and Z from X in the backward (one product) instead of keeping
    ~6 feature maps alive. The backward is written out below; tests/test_blocks.py checks it against autograd.

    Notation (channel-first, per sample): F = [T; P] = relu(W_tp X) (2C', N), Z = W_g X (C', N), S the mixing
    matrix of lib/affinity.py, q = S (F 1), d = q^T F, s = d^(-1/2) (0 where d = 0), Zs = Z s,
    R = (Zs F^T) S^T, U = R F, AZ = U s (without normalization s = 1), pre = W1 Z + W2 AZ.
    """

    @staticmethod
    def forward(ctx, x, w_tpg, w_1, w_2, bn_weight, bn_bias, running_mean, running_var, use_batch_stats,
                momentum, eps, is_sys, normalize):
        b, c, h, w = x.shape
        x_flat = x.reshape(b, c, h * w)
        factors, z, scale = _factors(x_flat, w_tpg)
        zs = z
        if normalize:
            scale = inverse_sqrt_degree(torch.bmm(mix(factors.sum(dim=2), is_sys).unsqueeze(1), factors))
            zs = z * scale
        mixed = mix(torch.bmm(zs, factors.transpose(1, 2)), is_sys)  # R (B, C', 2C')
        pre, _, _ = _pre_activation(factors, z, scale, mixed, w_1, w_2)
        out, mean, invstd = torch.native_batch_norm(pre, bn_weight, bn_bias, running_mean, running_var,
                                                    use_batch_stats, momentum, eps)
        active = out.relu_() > 0  # the ReLU's derivative, kept as 1 byte per entry
        ctx.save_for_backward(x, w_tpg, w_1, w_2, bn_weight, scale, mixed, mean, invstd, active)
        ctx.running = (running_mean, running_var)  # read by the backward only in eval mode, never changed there
        ctx.options = (use_batch_stats, eps, is_sys, bn_bias is not None)
        return out.add_(x_flat).reshape(b, c, h, w)

    @staticmethod
    def backward(ctx, grad_y):
        x, w_tpg, w_1, w_2, bn_weight, scale, mixed, mean, invstd, active = ctx.saved_tensors
        use_batch_stats, eps, is_sys, has_bias = ctx.options
        b, c, h, w = x.shape
        x_flat, grad_y = x.reshape(b, c, h * w), grad_y.reshape(b, c, h * w)
        factors, z, _ = _factors(x_flat, w_tpg)  # recomputed: cheaper than keeping them alive
        pre, unscaled, az = _pre_activation(factors, z, scale, mixed, w_1, w_2)
        grad_pre, grad_bn_weight, grad_bn_bias = torch.ops.aten.native_batch_norm_backward(
            grad_y * active, pre, bn_weight, *ctx.running, mean, invstd, use_batch_stats, eps,
            [True, bn_weight is not None, has_bias])
        del pre
        grad_w_2 = torch.bmm(grad_pre, az.transpose(1, 2)).sum(0)
        grad_az = torch.bmm(w_2.t().expand(b, -1, -1), grad_pre)  # (B, C', N)
        grad_w_1 = None if w_1 is None else torch.bmm(grad_pre, z.transpose(1, 2)).sum(0)
        k = z.shape[1]
        grad_hz = torch.empty(b, 3 * k, h * w, dtype=x.dtype, device=x.device)  # [dL/d(W_tp X); dL/dZ]
        grad_z_direct = None if w_1 is None else torch.bmm(w_1.t().expand(b, -1, -1), grad_pre)  # via W1 Z
        del grad_pre
        grad_u = grad_az if scale is None else grad_az * scale  # via AZ = U s
        grad_r = mix_transposed(torch.bmm(grad_u, factors.transpose(1, 2)), is_sys)  # dL/d(Zs F^T), R = (.) S^T
        grad_f = torch.bmm(mixed.transpose(1, 2), grad_u)  # via U = R F
        grad_zs = torch.bmm(grad_r, factors)  # (B, C', N)
        if scale is None:
            grad_f.baddbmm_(grad_r.transpose(1, 2), z)  # via Zs F^T
        else:
            grad_f.baddbmm_(grad_r.transpose(1, 2), z * scale)
            grad_scale = (grad_az * unscaled).sum(1, keepdim=True) + (grad_zs * z).sum(1, keepdim=True)
            grad_zs.mul_(scale)  # now dL/dZ through Zs = Z s
            grad_d = grad_scale * scale.pow(3) * -0.5  # d s / d d = -d^(-3/2) / 2 = -s^3 / 2, and 0 where s = 0
            grad_q = torch.bmm(factors, grad_d.transpose(1, 2)).squeeze(2)  # via d = q^T F
            grad_f.baddbmm_(mix(factors.sum(dim=2), is_sys).unsqueeze(2), grad_d)
            grad_f.add_(mix_transposed(grad_q, is_sys).unsqueeze(2))  # via q = S (F 1)
        if grad_z_direct is None:
            grad_hz[:, 2 * k:].copy_(grad_zs)
        else:
            torch.add(grad_z_direct, grad_zs, out=grad_hz[:, 2 * k:])
        torch.ops.aten.threshold_backward.grad_input(grad_f, factors, 0, grad_input=grad_hz[:, :2 * k])  # relu
        grad_x = torch.baddbmm(grad_y, w_tpg.t().expand(b, -1, -1), grad_hz).reshape(b, c, h, w)
        grad_w_tpg = torch.bmm(grad_hz, x_flat.transpose(1, 2)).sum(0)
        return (grad_x, grad_w_tpg, grad_w_1, grad_w_2, grad_bn_weight, grad_bn_bias) + (None,) * 7


def _factors(x_flat, w_tpg):
    """F = relu(W_tp X) (B, 2C', N) and Z = W_g X (B, C', N) from one product; scale placeholder None."""
    k = w_tpg.shape[0] // 3
    hz = torch.bmm(w_tpg.expand(x_flat.shape[0], -1, -1), x_flat)
    return hz[:, :2 * k].relu_(), hz[:, 2 * k:], None


def _pre_activation(factors, z, scale, mixed, w_1, w_2):
    """pre = W1 Z + W2 AZ, with U = R F and AZ = U s; returns (pre, U, AZ)."""
    b = z.shape[0]
    unscaled = torch.bmm(mixed, factors)
    az = unscaled if scale is None else unscaled * scale
    pre = torch.bmm(w_2.expand(b, -1, -1), az)
    if w_1 is not None:
        pre.baddbmm_(w_1.expand(b, -1, -1), z)
    return pre, unscaled, az


def fused_relu_dot_stage(x, w_tpg, w_1, w_2, bn_weight, bn_bias, running_mean, running_var, use_batch_stats,
                         momentum, eps, is_sys, normalize):
    """See `FusedReluDotStage`; x (B, C, H, W) NCHW-contiguous, w_tpg = [W_t; W_p; W_g] (3C', C)."""
    return FusedReluDotStage.apply(x, w_tpg, w_1, w_2, bn_weight, bn_bias, running_mean, running_var,
                                   use_batch_stats, momentum, eps, is_sys, normalize)
