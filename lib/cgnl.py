"""Compact generalized nonlocal block (Yue et al., NeurIPS 2018), Gaussian RBF kernel by Taylor expansion."""
import math

import torch
import torch.nn as nn

from lib.affinity import full_precision
from lib.stage import pointwise


class CGNL(nn.Module):
    """Y = X + GN(z(sum_k a_k T_k)), design.md section 2.

    t, p, g : C -> C' are flattened over (C', H, W) per sample; T_k = alpha_k t^k, P_k = alpha_k p^k
    (element-wise powers, k = 0..order), a_k = <P_k, g>, alpha_k = sqrt(beta (2 gamma)^k / k!),
    beta = exp(-2 gamma). The reference's groups = 1 is the only setting: GroupNorm(1, C). No ReLU.

    Args:
        inplanes: C.  planes: C'.  order: Taylor order K.  gamma: the RBF kernel's width.
        zero_init: zero the GroupNorm weight, so the block starts as the identity.
    """

    def __init__(self, inplanes, planes, order=2, gamma=1e-4, zero_init=False):
        super().__init__()
        self.order = order
        self.t = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.p = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.g = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.z = nn.Conv2d(planes, inplanes, kernel_size=1, bias=False)
        self.gn = nn.GroupNorm(num_groups=1, num_channels=inplanes)
        beta = math.exp(-2 * gamma)
        alpha = [math.sqrt(beta * (2 * gamma) ** k / math.factorial(k)) for k in range(order + 1)]
        self.register_buffer("alpha", torch.tensor(alpha), persistent=False)  # not in the reference's keys
        if zero_init:
            nn.init.zeros_(self.gn.weight)

    def kernel(self, t, p, g):
        """sum_k a_k T_k for t, p, g (B, C', H, W), in full precision (the powers overflow fp16 easily)."""
        with full_precision(t.device.type):
            dtype = torch.promote_types(t.dtype, torch.float32)
            t, p, g = (v.to(dtype).flatten(1) for v in (t, p, g))  # (B, C'HW)
            powers = torch.arange(self.order + 1, device=t.device, dtype=dtype)
            alpha = self.alpha.to(dtype)
            t_k = alpha[:, None] * t.unsqueeze(1).pow(powers[:, None])  # (B, K+1, C'HW)
            p_k = alpha[:, None] * p.unsqueeze(1).pow(powers[:, None])  # (B, K+1, C'HW)
            a = torch.bmm(p_k, g.unsqueeze(-1))  # (B, K+1, 1)
            return (a * t_k).sum(1)  # (B, C'HW)

    def forward(self, x):  # (B, C, H, W) -> (B, C, H, W)
        t = pointwise(self.t, x)
        out = self.kernel(t, pointwise(self.p, x), pointwise(self.g, x)).reshape(t.shape).to(t.dtype)
        return x + self.gn(pointwise(self.z, out))
