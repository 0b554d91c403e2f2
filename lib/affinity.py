"""Affinity operators A (B, N, N) of the nonlocal stage (design.md section 1), and two exact ways to apply them.

A stage builds one affinity from its input and every unit multiplies its features Z by it. The operators below
hide how: `DenseAffinity` holds A itself; `ReluDotAffinity` holds the factors T = relu(theta), P = relu(phi)
and applies A Z without ever forming an N x N tensor:

    M = T P^T                      (is_sys: M = (T P^T + P T^T) / 2)
    d = M 1 = T (P^T 1)            (is_sys: (T (P^T 1) + P (T^T 1)) / 2)
    s = d^(-1/2), 0 where d = 0    (normalized affinities only)
    A Z = s * M (s * Z)            evaluated right to left: O(N C'^2) instead of O(N^2 C')

Internally everything is channel-first, (B, C', N): that is the memory order of a (B, C', H, W) feature map, so
no transposed copies are made. With the factors stacked as F = [T; P] (B, 2C', N), M = F^T S F for a fixed
2C' x 2C' "mixing" matrix S (is_sys: [[0, I/2], [I/2, 0]]; else [[0, I], [0, 0]]), so that
    (M Z)^T = ((Z^T F^T) S^T) F   and   d^T = ((F 1)^T S^T) F:
two batched products through a C' x 2C' matrix, with no ones tensor for the degrees.

Everything here runs in float32 (or float64 when given float64) even under autocast: the degrees are sums
over N products and their inverse square roots lose most of their digits in bf16 / fp16.
"""
import math
from contextlib import contextmanager

import torch

AFFINITY_PATHS = ("auto", "dense", "factorized")


@contextmanager
def full_precision(device_type):
    """Disable autocast so that the affinity math runs in the inputs' (promoted) dtype."""
    if not torch.amp.is_autocast_available(device_type):  # e.g. 'meta' (tools/complexity.py counts there)
        yield
        return
    with torch.autocast(device_type=device_type, enabled=False):
        yield


def upcast(x):
    """Half / bfloat16 -> float32; float32 and float64 are kept (float64 is what the exactness tests use)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def inverse_sqrt_degree(d):
    """s = d^(-1/2) where d > 0, else 0, without NaN in the value or the gradient.

    The inner `where` keeps rsqrt away from 0, so the masked branch has a finite derivative (a bare
    `where(d > 0, d.rsqrt(), 0)` back-propagates 0 * inf = NaN), and nothing is written in place.
    """
    positive = d > 0
    return torch.where(positive, torch.where(positive, d, 1.0).rsqrt(), 0.0)


def mix(v, is_sys):
    """v S^T for row vectors v (..., 2C') = [v_T, v_P]: is_sys [v_P, v_T] / 2, else [v_P, 0]."""
    k = v.shape[-1] // 2
    if is_sys:
        return torch.cat([v[..., k:], v[..., :k]], dim=-1) / 2
    return torch.cat([v[..., k:], torch.zeros_like(v[..., k:])], dim=-1)


def mix_transposed(v, is_sys):
    """v S, the adjoint of `mix`: is_sys [v_P, v_T] / 2, else [0, v_T]."""
    k = v.shape[-1] // 2
    if is_sys:
        return torch.cat([v[..., k:], v[..., :k]], dim=-1) / 2
    return torch.cat([torch.zeros_like(v[..., :k]), v[..., :k]], dim=-1)


def uses_factorized(path, is_norm, relu_kernel, positions, planes):
    """Whether the affinity is applied in factored form ('auto': when N >= C').

    Dense: 2 N^2 C' multiply-adds per sample plus several passes over B N^2 entries; factorized: ~2 N C'^2 more
    than the 1x1 convolutions and O(N C') memory. With C = 2C' the multiply-adds are equal near N = 2C'
    (PreResNet stage 3: N = 64, C' = 32, where the two measure within 10% of each other, tools/bench_blocks.py);
    above, the factorized path wins in both time and memory (at N = 1024, C' = 8: ~100x in time).
    """
    if not (is_norm or relu_kernel):
        return False  # the softmax affinity has no factored form
    return path == "factorized" or (path == "auto" and positions >= planes)


class _Affinity:
    """`apply_channels_first(Z)` = (A Z^T)^T for Z (B, C', N); `apply(Z)` = A Z for Z (B, N, C'). Both run in
    full precision and return that precision."""

    def apply(self, z):  # (B, N, C') -> (B, N, C')
        return self.apply_channels_first(z.transpose(1, 2)).transpose(1, 2)

    def apply_channels_first(self, z):  # (B, C', N) -> (B, C', N)
        with full_precision(z.device.type):
            return self._apply(upcast(z))


class DenseAffinity(_Affinity):
    """A (B, N, N) held explicitly."""

    def __init__(self, matrix):
        self.matrix = matrix  # (B, N, N)

    def _apply(self, z):
        # (A Z)^T rather than Z^T A^T: the gradient of A then comes out in A's own layout, which the softmax
        # backward needs (a transposed one costs a copy of B N^2 entries).
        return torch.bmm(self.matrix, z.to(self.matrix.dtype).transpose(1, 2)).transpose(1, 2)

    def dense(self):
        return self.matrix


class ReluDotAffinity(_Affinity):
    """The ReLU-dot affinity kept in factored form (SNL's normalized one, and A2's plain one).

    Args:
        factors: F = [relu(theta); relu(phi)], (B, 2C', N).
        is_sys: symmetrize M = (T P^T + P T^T) / 2.
        normalize: A = D^(-1/2) M D^(-1/2) with D the row sums of M (else A = M, as A2 uses it).
    """

    def __init__(self, factors, is_sys, normalize):
        self.factors, self.is_sys = factors, is_sys
        self.scale = None
        if normalize:
            degree = self._multiply_rows(factors.sum(dim=2, keepdim=True).transpose(1, 2))  # (B, 1, N) = (M 1)^T
            self.scale = inverse_sqrt_degree(degree)

    def _multiply_rows(self, v):
        """(v S^T) F for v (B, K, 2C'): the products of rows with the factors."""
        return torch.bmm(mix(v, self.is_sys), self.factors)

    def _apply(self, z):
        z = z.to(self.factors.dtype)
        if self.scale is not None:
            z = z * self.scale
        out = self._multiply_rows(torch.bmm(z, self.factors.transpose(1, 2)))  # ((Z^T F^T) S^T) F = (M Z)^T
        return out if self.scale is None else out * self.scale

    def dense(self):
        k = self.factors.shape[1] // 2
        return dense_relu_dot(self.factors[:, :k], self.factors[:, k:], self.is_sys, self.scale is not None)


def dense_relu_dot(t, p, is_sys, normalize):
    """A (B, N, N) from relu(theta), relu(phi) (B, C', N) the way the reference writes it: M, its row sums, A."""
    m = torch.bmm(t.transpose(1, 2), p)  # (B, N, N)
    if is_sys:
        m = (m + m.transpose(1, 2)) / 2
    if not normalize:
        return m
    scale = inverse_sqrt_degree(m.sum(dim=2))  # (B, N)
    return scale.unsqueeze(2) * m * scale.unsqueeze(1)


def build_affinity(theta, phi, is_sys, is_norm, relu_kernel, path="auto"):
    """The stage's affinity operator from theta, phi (B, C', *spatial), N = the product of the spatial sizes.

    Args:
        is_sys, is_norm: as in design.md section 1.
        relu_kernel: the plain (un-normalized) affinity uses relu(theta) relu(phi)^T without softmax (A2);
            otherwise the plain affinity is softmax(theta phi^T) over the last axis.
        path: 'dense' forms A; 'factorized' never does (ReLU-dot affinities only); 'auto' picks the cheaper.
    """
    if path not in AFFINITY_PATHS:
        raise ValueError(f"affinity path must be one of {AFFINITY_PATHS}, got {path!r}")
    b, c = theta.shape[:2]
    n = math.prod(theta.shape[2:])  # N = product of the spatial sizes (1, 2 or 3 spatial dims)
    if path == "factorized" and not (is_norm or relu_kernel):
        raise ValueError("the softmax affinity has no factorized form; use path 'dense' or 'auto'")
    with full_precision(theta.device.type):
        theta = upcast(theta).reshape(b, c, n)  # (B, C', N)
        phi = upcast(phi).reshape(b, c, n)
        if is_norm or relu_kernel:
            if uses_factorized(path, is_norm, relu_kernel, n, c):
                return ReluDotAffinity(torch.relu(torch.cat([theta, phi], dim=1)), is_sys, normalize=is_norm)
            return DenseAffinity(dense_relu_dot(torch.relu(theta), torch.relu(phi), is_sys, is_norm))
        m = torch.bmm(theta.transpose(1, 2), phi)  # (B, N, N)
        if is_sys:
            m = (m + m.transpose(1, 2)) / 2
        return DenseAffinity(torch.softmax(m, dim=-1))
