"""Nonlocal block (Wang et al., CVPR 2018) and the double-attention block A2 (Chen et al., NeurIPS 2018),
as the SNL paper's comparison builds them: stages (docs/blocks.md) with the NL unit."""
from .stage import NonlocalStage, NonlocalUnit, frequencies, matrix, pointwise


class NLUnit(NonlocalUnit):
    """Y = X + relu(BN(W2 (A Z))), Z = g(X). Response W2 (1 - lam) (docs/spectral.md)."""

    def __init__(self, inplanes, planes, dim=2, device=None, dtype=None):
        super().__init__(inplanes, planes, dim, device=device, dtype=dtype)
        self.w_2 = self.conv(planes, inplanes)

    def fused_weights(self):
        return None, matrix(self.w_2)

    def graph_filter(self, att, z, linear=False):
        return pointwise(self.w_2, self.aggregate(att, z))

    def filter_response(self, lam):
        w_2 = matrix(self.w_2)
        return w_2 * (1 - frequencies(lam, w_2))


class NL(NonlocalStage):
    """NL: A = softmax(theta phi^T) over the key positions (by default)."""

    unit_cls = NLUnit


class A2(NonlocalStage):
    """A2: A = relu(theta) relu(phi)^T, no softmax, no normalization (by default); applied factorized."""

    unit_cls = NLUnit
    relu_kernel = True
