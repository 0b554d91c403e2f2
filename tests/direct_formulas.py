"""The blocks' math written directly from the equations (docs/blocks.md, docs/spectral.md), as plainly as
possible, to test lib/ against. Inputs may have 1, 2 or 3 spatial dims.

Everything is dense and explicit (M, d, s, A built entry by entry where it is cheap to), reads the weights
of one of our modules by the reference's parameter names, and shares no code with lib/.
"""
import math

import torch
import torch.nn.functional as F


def conv1x1(x, weight, bias=None):
    """A 1x1 convolution of any dim: out[b, o, ...] = sum_i W[o, i] x[b, i, ...] (+ bias[o])."""
    out = torch.einsum("oi,bi...->bo...", weight.flatten(1), x)
    return out if bias is None else out + bias.reshape((1, -1) + (1,) * (x.dim() - 2))


def batch_norm(x, bn):
    """The module's BatchNorm (1d/2d/3d) as a formula; in train mode it uses (and updates) the batch statistics."""
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.training, bn.momentum, bn.eps)


def affinity(theta, phi, is_sys, is_norm, relu_kernel):
    """A (B, N, N) from theta, phi (B, C', *spatial) (docs/blocks.md), with d and s built explicitly."""
    b, c = theta.shape[:2]
    th = theta.reshape(b, c, -1).transpose(1, 2)  # (B, N, C')
    ph = phi.reshape(b, c, -1).transpose(1, 2)
    if is_norm or relu_kernel:
        m = torch.relu(th) @ torch.relu(ph).transpose(1, 2)
    else:
        m = th @ ph.transpose(1, 2)
    if is_sys:
        m = (m + m.transpose(1, 2)) / 2
    if is_norm:
        d = m.sum(dim=2)
        s = torch.zeros_like(d)
        nonzero = d != 0
        s[nonzero] = d[nonzero] ** -0.5
        return s[:, :, None] * m * s[:, None, :]
    if relu_kernel:
        return m
    return torch.softmax(m, dim=2)


def aggregate(att, z):
    """A Z for z (B, C', *spatial)."""
    b, c = z.shape[:2]
    zf = z.reshape(b, c, -1).transpose(1, 2)
    return (att @ zf).transpose(1, 2).reshape(z.shape)


def stage_forward(stage, x, kind, output_relu=None):
    """One of our NonlocalStage modules (kind snl / nl / a2 / ns / dnl, or one of the spectral family: cheb /
    gsnl / cayley / arma) computed from the equations. output_relu: Y = X + relu(BN(.)) or X + BN(.); None = the
    block's default (no ReLU for gsnl only)."""
    relu = kind != "gsnl" if output_relu is None else output_relu
    att = affinity(conv1x1(x, stage.t.weight), conv1x1(x, stage.p.weight), stage.is_sys, stage.is_norm,
                   relu_kernel=kind == "a2")
    for unit in stage.stages:
        z = conv1x1(x, unit.g.weight)
        az = aggregate(att, z)
        if kind == "snl":
            pre = conv1x1(z, unit.w_1.weight) + conv1x1(az, unit.w_2.weight)
        elif kind in ("nl", "a2"):
            pre = conv1x1(az, unit.w_2.weight)
        elif kind == "ns":
            pre = conv1x1(z, unit.w_2.weight) - conv1x1(az, unit.w_2.weight)
        elif kind == "dnl":
            b, c = z.shape[:2]
            u = torch.softmax(conv1x1(x, unit.w_m.weight).reshape(b, -1), dim=1)  # (B, N)
            ctx = (z.reshape(b, c, -1) * u[:, None, :]).sum(-1).reshape((b, c) + (1,) * (z.dim() - 2))
            pre = conv1x1(ctx + az, unit.w_2.weight)
        elif kind in SPECTRAL_FILTERS:
            pre = SPECTRAL_FILTERS[kind](unit, att, z, x)
        else:
            raise ValueError(kind)
        out = batch_norm(pre, unit.bn)
        x = x + (torch.relu(out) if relu else out)
    return x


def identity_like(att):
    return torch.eye(att.shape[-1], dtype=att.dtype).expand_as(att)


def apply(matrix, z):
    """M Z for a dense (B, N, N) matrix M, z (B, C, *spatial)."""
    return aggregate(matrix, z)


def cheb_filter(unit, att, z, x):
    """sum_k W_{k+1} T_k(A) Z with the matrices T_k(A) themselves: T_0 = I, T_1 = A, T_k = 2 A T_{k-1} - T_{k-2}."""
    polys = [identity_like(att), att]
    for _ in range(2, unit.order + 1):
        polys.append(2 * att @ polys[-1] - polys[-2])
    return sum(conv1x1(apply(t_k, z), getattr(unit, f"w_{k + 1}").weight) for k, t_k in enumerate(polys))


def gsnl_filter(unit, att, z, x):
    """W1 Z + W2 (A Z) + W3 ((2A - I) Z)."""
    return (conv1x1(z, unit.w_1.weight) + conv1x1(apply(att, z), unit.w_2.weight)
            + conv1x1(apply(2 * att - identity_like(att), z), unit.w_3.weight))


def cayley_filter(unit, att, z, x):
    """W1 Z + W2 (W_h Z + L^2 Z), L = I - A formed and squared as a matrix."""
    lap = identity_like(att) - att
    return conv1x1(z, unit.w_1.weight) + conv1x1(conv1x1(z, unit.w_h.weight) + apply(lap @ lap, z), unit.w_2.weight)


def arma_filter(unit, att, z, x):
    """Z_0 = Z; Z_t = relu(W_a (A Z_{t-1}) + V Z_0), t = 1..T; W_o Z_T."""
    z_t = z
    for _ in range(unit.order):
        z_t = torch.relu(conv1x1(apply(att, z_t), unit.w_a.weight) + conv1x1(z, unit.v.weight))
    return conv1x1(z_t, unit.w_o.weight)


SPECTRAL_FILTERS = {"cheb": cheb_filter, "gsnl": gsnl_filter, "cayley": cayley_filter, "arma": arma_filter}


def cgnl_forward(block, x, order=2, gamma=1e-4):
    t = conv1x1(x, block.t.weight)
    p = conv1x1(x, block.p.weight)
    g = conv1x1(x, block.g.weight)
    b = x.shape[0]
    beta = math.exp(-2 * gamma)
    out = torch.zeros_like(t.reshape(b, -1))
    for k in range(order + 1):
        alpha = math.sqrt(beta * (2 * gamma) ** k / math.factorial(k))
        t_k = alpha * t.reshape(b, -1) ** k
        p_k = alpha * p.reshape(b, -1) ** k
        a_k = (p_k * g.reshape(b, -1)).sum(1, keepdim=True)
        out = out + a_k * t_k
    y = conv1x1(out.reshape(t.shape), block.z.weight)
    return x + F.group_norm(y, 1, block.gn.weight, block.gn.bias, block.gn.eps)


def criss_cross_forward(module, x):
    """Loops over positions: energies to the column (self excluded) and to the row, one softmax."""
    q = conv1x1(x, module.query_conv.weight, module.query_conv.bias)
    k = conv1x1(x, module.key_conv.weight, module.key_conv.bias)
    v = conv1x1(x, module.value_conv.weight, module.value_conv.bias)
    b, _, h, w = x.shape
    out = torch.zeros_like(v)
    for i in range(h):
        for j in range(w):
            col = [(r, j) for r in range(h) if r != i]
            row = [(i, c) for c in range(w)]
            keys = col + row
            energy = torch.stack([(q[:, :, i, j] * k[:, :, r, c]).sum(1) for r, c in keys], dim=1)  # (B, K)
            att = torch.softmax(energy, dim=1)
            vals = torch.stack([v[:, :, r, c] for r, c in keys], dim=2)  # (B, C, K)
            out[:, :, i, j] = (vals * att[:, None, :]).sum(2)
    return x + module.gamma * out
