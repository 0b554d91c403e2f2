"""Nonlocal stage with a Laplacian-like unit (NS in the SNL paper's comparison)."""
from .stage import NonlocalStage, NonlocalUnit, frequencies, matrix, pointwise


class NSUnit(NonlocalUnit):
    """Y = X + relu(BN(W2 Z - W2 (A Z))) = X + relu(BN(W2 (I - A) Z)): one shared W2. Response W2 lam."""

    def __init__(self, inplanes, planes, dim=2, device=None, dtype=None):
        super().__init__(inplanes, planes, dim, device=device, dtype=dtype)
        self.w_2 = self.conv(planes, inplanes)

    def fused_weights(self):
        w_2 = matrix(self.w_2)
        return w_2, -w_2  # W2 Z - W2 (A Z): the shared weight's two gradients add up through autograd

    def graph_filter(self, att, z, linear=False):
        return pointwise(self.w_2, z) - pointwise(self.w_2, self.aggregate(att, z))

    def filter_response(self, lam):
        w_2 = matrix(self.w_2)
        return w_2 * frequencies(lam, w_2)


class NS(NonlocalStage):
    unit_cls = NSUnit
