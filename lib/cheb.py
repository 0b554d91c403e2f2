"""Chebyshev nonlocal block of order K: the K-th order graph filter SNL is the first-order case of.

Our definition of the filter the SNL authors announced ("Cheby Filter") and never released; docs/spectral.md.
"""
import torch

from .errors import check_positive_int
from .stage import NonlocalStage, NonlocalUnit, frequencies, matrix


class ChebUnit(NonlocalUnit):
    """Y = X + relu(BN(sum_{k=0..K} W_{k+1} T_k(A) Z)), Z = g(X), W_k : C' -> C.

    T_0(A) Z = Z, T_1(A) Z = A Z, T_k(A) Z = 2 A (T_{k-1}(A) Z) - T_{k-2}(A) Z: K applications of A (each
    factorized when the affinity is normalized). Order 1 is SNL's unit, names g, w_1, w_2, bn included.
    Response sum_k W_{k+1} T_k(1 - lam).
    """

    def __init__(self, inplanes, planes, dim=2, order=2, device=None, dtype=None):
        super().__init__(inplanes, planes, dim, device=device, dtype=dtype)
        self.order = order
        for k in range(1, order + 2):
            setattr(self, f"w_{k}", self.conv(planes, inplanes))

    def weights(self):
        return [getattr(self, f"w_{k}") for k in range(1, self.order + 2)]

    def fused_weights(self):
        if self.order == 1:  # SNL's unit: the fused one-unit path applies
            return matrix(self.w_1), matrix(self.w_2)
        return None

    def graph_filter(self, att, z, linear=False):
        terms = [z, self.aggregate(att, z)]
        for _ in range(2, self.order + 1):
            terms.append(2 * self.aggregate(att, terms[-1]) - terms[-2])
        # one product with [W_1 | ... | W_{K+1}] on the stacked [T_0 Z; ...; T_K Z] instead of K + 1 convolutions
        weight = torch.cat([matrix(w) for w in self.weights()], dim=1)  # (C, (K+1) C')
        stacked = torch.cat(terms, dim=1).flatten(2)  # (B, (K+1) C', N)
        # bmm on the expanded weight: torch.matmul would fold the batch into rows through a transposed copy
        out = torch.bmm(weight.expand(stacked.shape[0], -1, -1).to(stacked.dtype), stacked)
        return out.reshape(z.shape[:1] + (-1,) + z.shape[2:])

    def filter_response(self, lam):
        weights = [matrix(w) for w in self.weights()]
        mu = 1 - frequencies(lam, weights[0])
        polys = [torch.ones_like(mu), mu]  # T_k(mu) by the same recurrence
        for _ in range(2, self.order + 1):
            polys.append(2 * mu * polys[-1] - polys[-2])
        return sum(t * w for t, w in zip(polys, weights))

    def extra_repr(self):
        return f"order={self.order}"


class Cheb(NonlocalStage):
    """Stage of Chebyshev units of order `order` (default 2) on SNL's affinity (normalized, symmetric)."""

    unit_cls = ChebUnit
    default_sys = True
    default_norm = True

    def __init__(self, inplanes, planes, order=2, **kwargs):
        check_positive_int("order (the Chebyshev order K)", order)
        super().__init__(inplanes, planes, order=order, **kwargs)
