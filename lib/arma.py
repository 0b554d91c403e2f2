"""ARMA nonlocal block (ours): the ARMA_1 graph convolution of Bianchi et al., "Graph Neural Networks with
Convolutional ARMA Filters" (TPAMI 2021), on the stage's affinity graph.

The SNL authors announced an "ARMA Filter" block and never released one; this definition is ours. docs/spectral.md.
"""
import torch

from .errors import check_positive_int
from .stage import NonlocalStage, NonlocalUnit, frequencies, matrix, pointwise


class ARMAUnit(NonlocalUnit):
    """Z_0 = g(X); Z_t = relu(W_a (A Z_{t-1}) + V Z_0), t = 1..T; Y = X + relu(BN(W_o Z_T)).

    W_a, V : C' -> C' are shared over the T = `order` iterations, W_o : C' -> C. The linear part (ReLUs
    removed) of these T iterations has the response W_o (sum_{t<T} (mu W_a)^t V + (mu W_a)^T), mu = 1 - lam;
    as T -> infinity (for |mu| ||W_a|| < 1) it tends to the rational filter W_o (I - mu W_a)^-1 V.
    """

    def __init__(self, inplanes, planes, dim=2, order=2, device=None, dtype=None):
        super().__init__(inplanes, planes, dim, device=device, dtype=dtype)
        self.order = order
        self.w_a = self.conv(planes, planes)
        self.v = self.conv(planes, planes)
        self.w_o = self.conv(planes, inplanes)

    def graph_filter(self, att, z, linear=False):
        skip = pointwise(self.v, z)  # V Z_0, the same in every iteration
        for _ in range(self.order):
            z = pointwise(self.w_a, self.aggregate(att, z)) + skip
            z = z if linear else torch.relu(z)
        return pointwise(self.w_o, z)

    def filter_response(self, lam):
        w_a, v, w_o = matrix(self.w_a), matrix(self.v), matrix(self.w_o)
        step = (1 - frequencies(lam, w_a)) * w_a  # mu W_a, (L, C', C')
        eye = torch.eye(w_a.shape[0], dtype=w_a.dtype, device=w_a.device)
        total = eye.expand_as(step)  # Z_0 -> Z_t for t = 0: I; then Z_t = mu W_a Z_{t-1} + V Z_0
        for _ in range(self.order):
            total = step @ total + v
        return w_o @ total

    def extra_repr(self):
        return f"order={self.order}"


class ARMA(NonlocalStage):
    """Stage of `ARMAUnit`s (T = `order`, default 2) on SNL's affinity (normalized, symmetric) by default."""

    unit_cls = ARMAUnit
    default_sys = True
    default_norm = True

    def __init__(self, inplanes, planes, order=2, **kwargs):
        check_positive_int("order (the ARMA iterations T)", order)
        super().__init__(inplanes, planes, order=order, **kwargs)
