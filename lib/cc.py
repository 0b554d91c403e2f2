"""Criss-cross attention (Huang et al., CCNet, ICCV 2019), design.md section 3."""
import torch
import torch.nn as nn

from lib.affinity import full_precision
from lib.stage import pointwise


class CrissCrossAttention(nn.Module):
    """Each position attends to its own row and column: one softmax over the H + W energies.

    Y = gamma (sum over the column + sum over the row of attention x value) + X; the position itself is
    excluded from the column term (it is counted once, in the row). gamma starts at 0: the identity.
    Names (query_conv, key_conv, value_conv, gamma) as in CCNet's code.
    """

    def __init__(self, inplanes, planes):
        super().__init__()
        self.query_conv = nn.Conv2d(inplanes, planes, kernel_size=1)
        self.key_conv = nn.Conv2d(inplanes, planes, kernel_size=1)
        self.value_conv = nn.Conv2d(inplanes, inplanes, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):  # (B, C, H, W)
        h = x.shape[2]
        with full_precision(x.device.type):
            dtype = torch.promote_types(x.dtype, torch.float32)
            x_full = x.to(dtype)  # under autocast x may be bf16 / fp16 while the weights are float32
            q = pointwise(self.query_conv, x_full).to(dtype)  # (B, C', H, W)
            k = pointwise(self.key_conv, x_full).to(dtype)  # (B, C', H, W)
            v = pointwise(self.value_conv, x_full).to(dtype)  # (B, C, H, W)
            energy_col = torch.einsum("bchw,bckw->bhwk", q, k)  # (B, H, W, H): (i, j) vs (k, j)
            self_in_col = torch.eye(h, dtype=torch.bool, device=x.device)[:, None, :]  # (H, 1, H)
            energy_col = energy_col.masked_fill(self_in_col, float("-inf"))
            energy_row = torch.einsum("bchw,bchk->bhwk", q, k)  # (B, H, W, W): (i, j) vs (i, k)
            att = torch.softmax(torch.cat([energy_col, energy_row], dim=-1), dim=-1)
            out = torch.einsum("bhwk,bckw->bchw", att[..., :h], v)
            out = out + torch.einsum("bhwk,bchk->bchw", att[..., h:], v)
        return x + self.gamma * out.to(x.dtype)


class CCStage(nn.Module):
    """`stage_num` criss-cross attention modules in sequence (two give every position a full-image view)."""

    def __init__(self, inplanes, planes, stage_num=1):
        super().__init__()
        self.stages = nn.Sequential(*[CrissCrossAttention(inplanes, planes) for _ in range(stage_num)])

    def forward(self, x):
        return self.stages(x)
