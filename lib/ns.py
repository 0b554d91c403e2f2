"""Nonlocal stage with a Laplacian-like unit (NS in the SNL paper's comparison)."""
import torch
import torch.nn as nn

from lib.stage import NonlocalStage, NonlocalUnit, pointwise


class NSUnit(NonlocalUnit):
    """Y = X + relu(BN(W2 Z - W2 (A Z))) = X + relu(BN(W2 (I - A) Z)): one shared W2."""

    def __init__(self, inplanes, planes):
        super().__init__(inplanes, planes)
        self.w_2 = nn.Conv2d(planes, inplanes, kernel_size=1, bias=False)

    def fused_weights(self):
        w_2 = self.w_2.weight.flatten(1)
        return w_2, -w_2  # W2 Z - W2 (A Z): the shared weight's two gradients add up through autograd

    def forward(self, x, att):  # x (B, C, H, W)
        z = pointwise(self.g, x)
        return x + torch.relu(self.bn(pointwise(self.w_2, z) - pointwise(self.w_2, self.aggregate(att, z))))


class NS(NonlocalStage):
    unit_cls = NSUnit
