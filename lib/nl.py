"""Nonlocal block (Wang et al., CVPR 2018) and the double-attention block A2 (Chen et al., NeurIPS 2018),
as the SNL paper's comparison builds them: stages of design.md section 1 with the NL unit."""
import torch
import torch.nn as nn

from lib.stage import NonlocalStage, NonlocalUnit, pointwise


class NLUnit(NonlocalUnit):
    """Y = X + relu(BN(W2 (A Z))), Z = g(X)."""

    def __init__(self, inplanes, planes):
        super().__init__(inplanes, planes)
        self.w_2 = nn.Conv2d(planes, inplanes, kernel_size=1, bias=False)

    def fused_weights(self):
        return None, self.w_2.weight.flatten(1)

    def forward(self, x, att):  # x (B, C, H, W)
        return x + torch.relu(self.bn(pointwise(self.w_2, self.aggregate(att, pointwise(self.g, x)))))


class NL(NonlocalStage):
    """NL: A = softmax(theta phi^T) over the key positions (by default)."""

    unit_cls = NLUnit


class A2(NonlocalStage):
    """A2: A = relu(theta) relu(phi)^T, no softmax, no normalization (by default); applied factorized."""

    unit_cls = NLUnit
    relu_kernel = True
