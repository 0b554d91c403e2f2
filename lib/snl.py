"""Spectral Nonlocal Block (Zhu et al., "Unifying Nonlocal Blocks for Neural Networks", ICCV 2021)."""
import torch
import torch.nn as nn

from lib.stage import NonlocalStage, NonlocalUnit, pointwise


class SNLUnit(NonlocalUnit):
    """Y = X + relu(BN(W1 Z + W2 (A Z))), Z = g(X)   (design.md section 1).

    Read as a graph filter on the affinity graph: with L = I - A the normalized Laplacian, a first-order
    Chebyshev filter is theta_0 Z + theta_1 (L - I) Z = W1 Z - W2' A Z; SNL keeps both the 0th-order term
    (W1 Z) and the 1st-order term (W2 A Z) with free weights.
    """

    def __init__(self, inplanes, planes):
        super().__init__(inplanes, planes)
        self.w_1 = nn.Conv2d(planes, inplanes, kernel_size=1, bias=False)
        self.w_2 = nn.Conv2d(planes, inplanes, kernel_size=1, bias=False)

    def fused_weights(self):
        return self.w_1.weight.flatten(1), self.w_2.weight.flatten(1)

    def forward(self, x, att):  # x (B, C, H, W)
        z = pointwise(self.g, x)  # (B, C', H, W)
        return x + torch.relu(self.bn(pointwise(self.w_1, z) + pointwise(self.w_2, self.aggregate(att, z))))


class SNL(NonlocalStage):
    """The SNL stage: A = D^(-1/2) M D^(-1/2), M = (relu(theta) relu(phi)^T + its transpose) / 2.

    A is the symmetric normalized adjacency of a graph over the N positions, so L = I - A has its
    eigenvalues in [0, 2]: the spectral range on which the Chebyshev filter of `SNLUnit` is defined.
    With N >= C' the stage never forms A (see lib/affinity.py): O(N C'^2) instead of O(N^2 C').
    """

    unit_cls = SNLUnit
    default_sys = True
    default_norm = True
