"""Spectral Nonlocal Block (Zhu et al., "Unifying Nonlocal Blocks for Neural Networks", ICCV 2021)."""
from .stage import NonlocalStage, NonlocalUnit, frequencies, matrix, pointwise


class SNLUnit(NonlocalUnit):
    """Y = X + relu(BN(W1 Z + W2 (A Z))), Z = g(X)   (docs/blocks.md; the paper's Eq. 10).

    Read as a graph filter on the affinity graph: with L = I - A the normalized Laplacian, a first-order
    Chebyshev filter is theta_0 Z + theta_1 (L - I) Z = W1 Z - W2' A Z; SNL keeps both the 0th-order term
    (W1 Z) and the 1st-order term (W2 A Z) with free weights. Response W1 + W2 (1 - lam) (docs/spectral.md).
    """

    def __init__(self, inplanes, planes, dim=2, device=None, dtype=None):
        super().__init__(inplanes, planes, dim, device=device, dtype=dtype)
        self.w_1 = self.conv(planes, inplanes)
        self.w_2 = self.conv(planes, inplanes)

    def fused_weights(self):
        return matrix(self.w_1), matrix(self.w_2)

    def graph_filter(self, att, z, linear=False):
        return pointwise(self.w_1, z) + pointwise(self.w_2, self.aggregate(att, z))

    def filter_response(self, lam):
        w_1, w_2 = matrix(self.w_1), matrix(self.w_2)
        return w_1 + w_2 * (1 - frequencies(lam, w_2))


class SNL(NonlocalStage):
    """The SNL stage: A = D^(-1/2) M D^(-1/2), M = (relu(theta) relu(phi)^T + its transpose) / 2.

    A is the symmetric normalized adjacency of a graph over the N positions, so L = I - A has its
    eigenvalues in [0, 2]: the spectral range on which the Chebyshev filter of `SNLUnit` is defined.
    With N >= C' the stage never forms A (see lib/affinity.py): O(N C'^2) instead of O(N^2 C').
    """

    unit_cls = SNLUnit
    default_sys = True
    default_norm = True
