"""The blocks' math written directly from design.md, as plainly as possible, to test lib/ against.

Everything is dense and explicit (M, d, s, A built entry by entry where it is cheap to), reads the weights
of one of our modules by the reference's parameter names, and shares no code with lib/.
"""
import math

import torch
import torch.nn.functional as F


def conv1x1(x, weight, bias=None):
    return F.conv2d(x, weight, bias)


def batch_norm(x, bn):
    """The module's BatchNorm2d as a formula; in train mode it uses (and updates) the batch statistics."""
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.training, bn.momentum, bn.eps)


def affinity(theta, phi, is_sys, is_norm, relu_kernel):
    """A (B, N, N) from theta, phi (B, C', H, W), design.md section 1, with d and s built explicitly."""
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
    """A Z for z (B, C', H, W)."""
    b, c, h, w = z.shape
    zf = z.reshape(b, c, -1).transpose(1, 2)
    return (att @ zf).transpose(1, 2).reshape(b, c, h, w)


def stage_forward(stage, x, kind):
    """One of our NonlocalStage modules (kind snl / nl / a2 / ns / dnl) computed from design.md."""
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
            ctx = (z.reshape(b, c, -1) * u[:, None, :]).sum(-1)[:, :, None, None]  # (B, C', 1, 1)
            pre = conv1x1(ctx + az, unit.w_2.weight)
        else:
            raise ValueError(kind)
        x = x + torch.relu(batch_norm(pre, unit.bn))
    return x


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
