"""Disentangled nonlocal block (Yin et al., ECCV 2020) as the SNL paper's comparison builds it."""
import torch

from .stage import NonlocalStage, NonlocalUnit, frequencies, matrix, pointwise


class DNLUnit(NonlocalUnit):
    """Y = X + relu(BN(W2 (c + A Z))), with the unary term c = sum_n u_n Z_n, u = softmax_n(w_m(X)).

    Only W2 (A Z) is a graph filter (response W2 (1 - lam), docs/spectral.md): the unary term c weighs the
    positions by u, which comes from X and not from the graph, so it has no frequency response; `graph_filter`
    and `filter_response` leave it out and `forward` adds W2 c.
    """

    def __init__(self, inplanes, planes, dim=2, device=None, dtype=None):
        super().__init__(inplanes, planes, dim, device=device, dtype=dtype)
        self.w_m = self.conv(inplanes, 1)
        self.w_2 = self.conv(planes, inplanes)

    def forward(self, x, att):  # x (B, C, *spatial)
        z = pointwise(self.g, x)  # (B, C', *spatial)
        u = torch.softmax(pointwise(self.w_m, x).flatten(1), dim=1)  # (B, N): weights over positions
        c = torch.bmm(z.flatten(2), u.unsqueeze(2))  # (B, C', 1) = sum_n u_n Z_n, broadcast over positions
        c = c.reshape(c.shape[:2] + (1,) * (z.dim() - 2))
        return self.residual(x, pointwise(self.w_2, c + self.aggregate(att, z)))

    def graph_filter(self, att, z, linear=False):
        return pointwise(self.w_2, self.aggregate(att, z))

    def filter_response(self, lam):
        w_2 = matrix(self.w_2)
        return w_2 * (1 - frequencies(lam, w_2))


class DNL(NonlocalStage):
    unit_cls = DNLUnit
