"""Affinity operators A (B, N, N) of the nonlocal stage (docs/blocks.md), and exact ways to apply them.

A stage builds one affinity from its input and every unit multiplies its features Z by it. The operators below
hide how: `DenseAffinity` holds A itself; `SoftmaxAffinity` applies softmax(theta phi^T) Z by fused attention;
`ReluDotAffinity` holds the factors T = relu(theta), P = relu(phi) and applies A Z without ever forming an
N x N tensor:

    M = T P^T                      (is_sys: M = (T P^T + P T^T) / 2)
    d = M 1 = T (P^T 1)            (is_sys: (T (P^T 1) + P (T^T 1)) / 2)
    s = d^(-1/2), 0 where d = 0    (normalized affinities only)
    A Z = s * M (s * Z)            evaluated right to left: O(N C'^2) instead of O(N^2 C')

The operators take and return channel-first (B, C', N) features: the memory order of a (B, C', *spatial)
feature map; the ReLU-dot one works in that order throughout, so it makes no transposed copies. With the
factors stacked as F = [T; P] (B, 2C', N), M = F^T S F for a fixed 2C' x 2C' "mixing" matrix S
(is_sys: [[0, I/2], [I/2, 0]]; else [[0, I], [0, 0]]), so that
    (M Z)^T = ((Z^T F^T) S^T) F   and   d^T = ((F 1)^T S^T) F:
two batched products through a C' x 2C' matrix, with no ones tensor for the degrees.

Everything here runs in float32 (or float64 when given float64) even under autocast: the degrees are sums
over N products and their inverse square roots lose most of their digits in bf16 / fp16, and the softmax's
logits are exponentiated.
"""
from contextlib import contextmanager

import torch
import torch.nn.functional as F

AFFINITY_PATHS = ("auto", "dense", "factorized")


def compiling():
    """Whether the forward is being traced by torch.compile or torch.export (TorchDynamo or export tracing)."""
    is_compiling = getattr(torch.compiler, "is_compiling", None) or torch._dynamo.is_compiling  # torch < 2.3
    return is_compiling()


def exporting():
    """Whether the forward is being captured for deployment: torch.export, torch.onnx.export, torch.jit.trace.

    The blocks' fast paths with a hand-written backward (the fused SNL stage, CGNL's and CC's autograd.Functions,
    with in-place tricks) then give way to plain tensor operations with the same math, which every exporter
    handles (no gradients are needed there). Under torch.compile they stay, compiled as they are, except CGNL's,
    whose backward TorchDynamo cannot trace (see lib/cgnl.py).
    """
    is_exporting = getattr(torch.compiler, "is_exporting", None) or compiling  # torch < 2.5: any capture
    return is_exporting() or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()


@contextmanager
def full_precision(device_type):
    """Disable autocast so that the affinity math runs in the inputs' (promoted) dtype."""
    # 'meta' has no autocast (tools/complexity.py counts there); with autocast off there is nothing to disable,
    # and no autocast region ends up in an exported graph.
    if not torch.amp.is_autocast_available(device_type) or not torch.is_autocast_enabled(device_type):
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


class SoftmaxAffinity(_Affinity):
    """A = softmax(theta phi^T) over the last axis (NL, NS, DNL), applied by fused attention: A is never stored.

    A Z is scaled-dot-product attention with one head, query theta, key phi, value Z and scale 1 (NL's logits
    are not divided by sqrt(C')), so `torch.nn.functional.scaled_dot_product_attention` computes it with its fused
    kernels (flash / memory-efficient, on CPU and GPU), which keep O(N C') memory and recompute the logits in the
    backward. With is_sys the logits are (theta phi^T + phi theta^T) / 2 = [theta, phi] [phi, theta]^T / 2: the
    same call with query [theta, phi], key [phi, theta] (channels concatenated) and scale 1/2.

    The kernels want contiguous (B, heads, N, head_dim) tensors with one head_dim for query, key and value:
    transposed views or unequal widths silently fall back to the unfused path, which forms A. So every operand
    is written once into that layout (O(N C'), small next to the N^2 work), zero-padded to a common width (zero
    channels add nothing to the logits and give zero output channels).

    Args:
        theta, phi: (B, C', N), float32 or float64 (the caller upcasts).
        is_sys: symmetrize the logits before the softmax.
    """

    def __init__(self, theta, phi, is_sys):
        self.scale = 0.5 if is_sys else 1.0
        self.parts = ([theta, phi], [phi, theta]) if is_sys else ([theta], [phi])  # channel blocks of q, k
        self.channels = sum(part.shape[1] for part in self.parts[0])
        self._heads = {}  # head width -> (query, key)

    def heads(self, width):
        """query, key (B, 1, N, width)."""
        if width not in self._heads:
            self._heads[width] = tuple(as_heads(parts, width) for parts in self.parts)
        return self._heads[width]

    def _apply(self, z):  # (B, C', N) -> (B, C', N)
        width = head_width(max(z.shape[1], self.channels), z.device)
        query, key = self.heads(width)
        value = as_heads([z.to(query.dtype)], width)
        out = F.scaled_dot_product_attention(query, key, value, scale=self.scale)  # (B, 1, N, width)
        return out[:, 0, :, :z.shape[1]].transpose(1, 2)

    def dense(self):
        query, key = self.heads(self.channels)
        with full_precision(query.device.type):
            logits = torch.matmul(query[:, 0], key[:, 0].transpose(1, 2))  # (B, N, N)
            return torch.softmax(logits * self.scale if self.scale != 1 else logits, dim=-1)


def as_heads(parts, width):
    """The channel blocks `parts` (each (B, K_i, N)) side by side as one contiguous head (B, 1, N, width),
    zero-padded on the right, written in one pass."""
    b, _, n = parts[0].shape
    columns = [part.transpose(1, 2) for part in parts]  # (B, N, K_i) views
    padding = width - sum(part.shape[1] for part in parts)
    if padding:
        columns.append(parts[0].new_zeros(()).expand(b, n, padding))  # no memory of its own
    return torch.cat(columns, dim=2).unsqueeze(1)


def head_width(channels, device):
    """The head_dim used for `channels` channels. CPU: at least 16 (measured on AVX2 with 2 threads at N = 1024:
    forward + backward with head_dim 8 zero-padded to 16 takes 0.7x the time of head_dim 8, and 4 padded to 16
    0.75x of 4). CUDA: a multiple of 8, the alignment its fused kernels require (else the unfused path runs)."""
    if device.type == "cpu":
        return max(channels, 16)
    return -(-channels // 8) * 8


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
        is_sys, is_norm: the affinity options of docs/blocks.md (symmetrize M; normalize it by its degrees).
        relu_kernel: the plain (un-normalized) affinity uses relu(theta) relu(phi)^T without softmax (A2);
            otherwise the plain affinity is softmax(theta phi^T) over the last axis.
        path: 'dense' forms A. 'auto' never does where it is not cheaper to: the ReLU-dot affinities are kept
            factored when N >= C', the softmax affinity is applied by fused attention (`SoftmaxAffinity`).
            'factorized' forces the factored ReLU-dot form and is an error for the softmax affinity, which has
            no such form ('auto' already avoids the N x N matrix there).
    """
    if path not in AFFINITY_PATHS:
        raise ValueError(f"affinity path must be one of {AFFINITY_PATHS}, got {path!r}")
    if path == "factorized" and not (is_norm or relu_kernel):
        raise ValueError("the softmax affinity has no factorized form; use path 'auto' (fused attention, no N x N "
                         "matrix) or 'dense'")
    b, c = theta.shape[:2]
    with full_precision(theta.device.type):
        theta = upcast(theta).reshape(b, c, -1)  # (B, C', N)
        phi = upcast(phi).reshape(b, c, -1)
        positions = theta.shape[2]
        if is_norm or relu_kernel:
            if uses_factorized(path, is_norm, relu_kernel, positions, c):
                return ReluDotAffinity(torch.relu(torch.cat([theta, phi], dim=1)), is_sys, normalize=is_norm)
            return DenseAffinity(dense_relu_dot(torch.relu(theta), torch.relu(phi), is_sys, is_norm))
        if path == "auto":
            return SoftmaxAffinity(theta, phi, is_sys)
        m = torch.bmm(theta.transpose(1, 2), phi)  # (B, N, N)
        if is_sys:
            m = (m + m.transpose(1, 2)) / 2
        return DenseAffinity(torch.softmax(m, dim=-1))
