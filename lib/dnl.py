"""Disentangled nonlocal block (Yin et al., ECCV 2020) as the SNL paper's comparison builds it."""
import torch
import torch.nn as nn

from lib.stage import NonlocalStage, NonlocalUnit, pointwise


class DNLUnit(NonlocalUnit):
    """Y = X + relu(BN(W2 (c + A Z))), with the unary term c = sum_n u_n Z_n, u = softmax_n(w_m(X))."""

    def __init__(self, inplanes, planes):
        super().__init__(inplanes, planes)
        self.w_m = nn.Conv2d(inplanes, 1, kernel_size=1, bias=False)
        self.w_2 = nn.Conv2d(planes, inplanes, kernel_size=1, bias=False)

    def forward(self, x, att):  # x (B, C, H, W)
        z = pointwise(self.g, x)  # (B, C', H, W)
        u = torch.softmax(pointwise(self.w_m, x).flatten(1), dim=1)  # (B, N): weights over positions
        c = torch.bmm(z.flatten(2), u.unsqueeze(2)).unsqueeze(-1)  # (B, C', 1, 1) = sum_n u_n Z_n
        return x + torch.relu(self.bn(pointwise(self.w_2, c + self.aggregate(att, z))))


class DNL(NonlocalStage):
    unit_cls = DNLUnit
