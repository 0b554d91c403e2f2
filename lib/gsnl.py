"""Generalized SNL (gSNL) of the SNL authors' earlier release (github zh460045050/spectral-nonlocal-block,
model/snl_block.py, gSNLStage / gSNLUnit), with its parameter names, default affinity and no output ReLU."""
from .stage import NonlocalStage, NonlocalUnit, frequencies, matrix, pointwise


class GSNLUnit(NonlocalUnit):
    """Y = X + BN(W1 Z + W2 (A Z) + W3 ((2A - I) Z)), Z = g(X); no ReLU after the BN (that release's default).

    (2A - I) = T_2(A) where A^2 = A. Response W1 + W2 mu + W3 (2 mu - 1), mu = 1 - lam (docs/spectral.md).
    """

    output_relu = False

    def __init__(self, inplanes, planes, dim=2, device=None, dtype=None):
        super().__init__(inplanes, planes, dim, device=device, dtype=dtype)
        self.w_1 = self.conv(planes, inplanes)
        self.w_2 = self.conv(planes, inplanes)
        self.w_3 = self.conv(planes, inplanes)

    def graph_filter(self, att, z, linear=False):
        az = self.aggregate(att, z)
        return pointwise(self.w_1, z) + pointwise(self.w_2, az) + pointwise(self.w_3, 2 * az - z)

    def filter_response(self, lam):
        w_1, w_2, w_3 = matrix(self.w_1), matrix(self.w_2), matrix(self.w_3)
        mu = 1 - frequencies(lam, w_1)
        return w_1 + w_2 * mu + w_3 * (2 * mu - 1)


class GSNL(NonlocalStage):
    """gSNL stage; its default affinity is that release's: A = softmax(theta phi^T), not symmetric."""

    unit_cls = GSNLUnit
