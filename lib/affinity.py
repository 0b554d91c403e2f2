"""Affinity operators A (B, N, N) of the nonlocal stage (design.md section 1), and two exact ways to apply them.

A stage builds one affinity from its input and every unit multiplies its features Z (B, N, C') by it. The
operators below hide how: `DenseAffinity` holds A itself; `ReluDotAffinity` holds the factors T = relu(theta),
P = relu(phi) (B, N, C') and applies A Z without ever forming an N x N tensor:

    M = T P^T                      (is_sys: M = (T P^T + P T^T) / 2)
    d = M 1 = T (P^T 1)            (is_sys: (T (P^T 1) + P (T^T 1)) / 2)
    s = d^(-1/2), 0 where d = 0    (normalized affinities only)
    A Z = s * M (s * Z)            evaluated right to left: O(N C'^2) instead of O(N^2 C')

Everything here runs in float32 (or float64 when given float64) even under autocast: the degrees are sums
over N products and their inverse square roots lose most of their digits in bf16 / fp16.
"""
from contextlib import contextmanager

import torch

AFFINITY_PATHS = ("auto", "dense", "factorized")


@contextmanager
def full_precision(device_type):
    """Disable autocast so that the affinity math runs in the inputs' (promoted) dtype."""
    with torch.autocast(device_type=device_type, enabled=False):
        yield


def _upcast(x):
    """Half / bfloat16 -> float32; float32 and float64 are kept (float64 is what the exactness tests use)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def inverse_sqrt_degree(d):
    """s = d^(-1/2) where d > 0, else 0, without NaN in the value or the gradient.

    The inner `where` keeps rsqrt away from 0, so the masked branch has a finite derivative (a bare
    `where(d > 0, d.rsqrt(), 0)` back-propagates 0 * inf = NaN), and nothing is written in place.
    """
    positive = d > 0
    return torch.where(positive, torch.where(positive, d, torch.ones_like(d)).rsqrt(), torch.zeros_like(d))


class _Affinity:
    """`apply(Z)` = A Z for Z (B, N, C'), computed in full precision; the result keeps that precision."""

    def apply(self, z):  # (B, N, C') -> (B, N, C')
        with full_precision(z.device.type):
            return self._apply(_upcast(z))


class DenseAffinity(_Affinity):
    """A (B, N, N) held explicitly."""

    def __init__(self, matrix):
        self.matrix = matrix  # (B, N, N)

    def _apply(self, z):
        return torch.bmm(self.matrix, z.to(self.matrix.dtype))

    def dense(self):
        return self.matrix


class ReluDotAffinity(_Affinity):
    """The ReLU-dot affinity kept in factored form (SNL's normalized one, and A2's plain one).

    Args:
        t, p: relu(theta), relu(phi), each (B, N, C').
        is_sys: symmetrize M = (T P^T + P T^T) / 2.
        normalize: A = D^(-1/2) M D^(-1/2) with D the row sums of M (else A = M, as A2 uses it).
    """

    def __init__(self, t, p, is_sys, normalize):
        self.t, self.p, self.is_sys = t, p, is_sys
        self.scale = None
        if normalize:
            degree = self._multiply(torch.ones_like(t[..., :1])).squeeze(-1)  # (B, N) = M 1
            self.scale = inverse_sqrt_degree(degree).unsqueeze(-1)  # (B, N, 1)

    def _multiply(self, z):
        """M z for z (B, N, K), right to left: never an N x N intermediate."""
        out = torch.bmm(self.t, torch.bmm(self.p.transpose(1, 2), z))  # T (P^T z)
        if self.is_sys:
            out = (out + torch.bmm(self.p, torch.bmm(self.t.transpose(1, 2), z))) / 2  # + P (T^T z)
        return out

    def _apply(self, z):
        z = z.to(self.t.dtype)
        if self.scale is None:
            return self._multiply(z)
        return self.scale * self._multiply(self.scale * z)

    def dense(self):
        m = torch.bmm(self.t, self.p.transpose(1, 2))  # (B, N, N)
        if self.is_sys:
            m = (m + m.transpose(1, 2)) / 2
        if self.scale is None:
            return m
        return self.scale * m * self.scale.transpose(1, 2)


def build_affinity(theta, phi, is_sys, is_norm, relu_kernel, path="auto"):
    """The stage's affinity operator from theta, phi (B, C', H, W).

    Args:
        is_sys, is_norm: as in design.md section 1.
        relu_kernel: the plain (un-normalized) affinity uses relu(theta) relu(phi)^T without softmax (A2);
            otherwise the plain affinity is softmax(theta phi^T) over the last axis.
        path: 'dense' forms A; 'factorized' never does (ReLU-dot affinities only); 'auto' picks the cheaper.
    """
    if path not in AFFINITY_PATHS:
        raise ValueError(f"affinity path must be one of {AFFINITY_PATHS}, got {path!r}")
    b, c, h, w = theta.shape
    n = h * w
    with full_precision(theta.device.type):
        theta = _upcast(theta).reshape(b, c, n).transpose(1, 2)  # (B, N, C')
        phi = _upcast(phi).reshape(b, c, n).transpose(1, 2)  # (B, N, C')
        if is_norm or relu_kernel:
            op = ReluDotAffinity(torch.relu(theta), torch.relu(phi), is_sys, normalize=is_norm)
            # Dense: ~2 N^2 C' flops plus several passes over N^2 entries; factorized: ~4 N C'^2 flops
            # and no N^2 memory. At N >= C' the factorized form wins on both counts.
            factorized = path == "factorized" or (path == "auto" and n >= c)
            return op if factorized else DenseAffinity(op.dense())
        if path == "factorized":
            raise ValueError("the softmax affinity has no factorized form; use path 'dense' or 'auto'")
        m = torch.bmm(theta, phi.transpose(1, 2))  # (B, N, N)
        if is_sys:
            m = (m + m.transpose(1, 2)) / 2
        return DenseAffinity(torch.softmax(m, dim=-1))
