"""The "Cayley" unit of the SNL authors' ICCV 2021 release (SNL-Classification/model/nls/caylay.py,
CayleySNLUnit), on SNL's affinity.

It only carries the name: it is a polynomial filter in L = I - A, NOT the rational Cayley filter of CayleyNets
(Levie et al., 2018). docs/spectral.md.
"""
from .errors import ConfigError
from .stage import NonlocalStage, NonlocalUnit, frequencies, matrix, pointwise


class CayleyUnit(NonlocalUnit):
    """Y = X + relu(BN(W1 Z + W2 (W_h Z + L^2 Z))), Z = g(X) with C'' = int(C' / 2) channels, L = I - A.

    L^2 Z = Z - 2 A Z + A (A Z): two applications of A, never L or L^2 themselves. W1, W2 : C'' -> C and
    W_h : C'' -> C''. Response W1 + W2 (W_h + lam^2 I) (docs/spectral.md).
    """

    def __init__(self, inplanes, planes, dim=2, device=None, dtype=None):
        half = int(planes / 2)  # the release's stage builds its unit with planes // 2 channels
        if half < 1:
            raise ConfigError(f"cayley works on Z of int(planes / 2) channels: planes must be at least 2, "
                              f"got {planes}")
        super().__init__(inplanes, planes, dim, z_planes=half, device=device, dtype=dtype)
        self.w_1 = self.conv(half, inplanes)
        self.w_2 = self.conv(half, inplanes)
        self.w_h = self.conv(half, half)

    def graph_filter(self, att, z, linear=False):
        az = self.aggregate(att, z)
        l2z = z - 2 * az + self.aggregate(att, az)  # L^2 Z
        return pointwise(self.w_1, z) + pointwise(self.w_2, pointwise(self.w_h, z) + l2z)

    def filter_response(self, lam):
        w_1, w_2, w_h = matrix(self.w_1), matrix(self.w_2), matrix(self.w_h)
        lam = frequencies(lam, w_1)
        return w_1 + w_2 @ w_h + w_2 * lam ** 2


class Cayley(NonlocalStage):
    """Stage of `CayleyUnit`s on SNL's affinity (normalized, symmetric) by default."""

    unit_cls = CayleyUnit
    default_sys = True
    default_norm = True
