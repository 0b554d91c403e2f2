"""Criss-cross attention (Huang et al., CCNet, ICCV 2019); docs/blocks.md."""
import torch
import torch.nn as nn

from .affinity import exporting, full_precision
from .cgnl import check_input
from .errors import ConfigError, check_dim, check_positive_int


class CrissCrossAttention(nn.Module):
    """Each position attends to its own row and column: one softmax over the H + W energies.

    Y = gamma (sum over the column + sum over the row of attention x value) + X; the position itself is
    excluded from the column term (it is counted once, in the row). gamma starts at 0: the identity.
    Names (query_conv, key_conv, value_conv, gamma) as in CCNet's code. device, dtype: where and in which dtype
    the parameters are created (as for torch.nn layers).
    """

    def __init__(self, inplanes, planes, device=None, dtype=None):
        super().__init__()
        self.inplanes, self.planes = inplanes, planes
        self.query_conv = nn.Conv2d(inplanes, planes, kernel_size=1, device=device, dtype=dtype)
        self.key_conv = nn.Conv2d(inplanes, planes, kernel_size=1, device=device, dtype=dtype)
        self.value_conv = nn.Conv2d(inplanes, inplanes, kernel_size=1, device=device, dtype=dtype)
        self.gamma = nn.Parameter(torch.zeros(1, device=device, dtype=dtype))

    def reset_parameters(self):
        """Initialize the parameters as the constructor does (e.g. after building on 'meta' and `to_empty`)."""
        for conv in (self.query_conv, self.key_conv, self.value_conv):
            conv.reset_parameters()
        nn.init.zeros_(self.gamma)

    def forward(self, x):  # (B, C, H, W)
        check_input(x, "cc", self.inplanes, 2)
        b, c, h, w = x.shape
        with full_precision(x.device.type):
            dtype = torch.promote_types(x.dtype, torch.float32)
            # [q; k; gamma v] for every position, positions in row order: (B H W, 2C' + C). gamma is folded into
            # the value projection: gamma (A v) = A (gamma v), and no pass over the output is needed for it.
            weight = torch.cat([self.query_conv.weight, self.key_conv.weight,
                                self.gamma * self.value_conv.weight]).flatten(1).to(dtype)
            bias = torch.cat([self.query_conv.bias, self.key_conv.bias, self.gamma * self.value_conv.bias])
            rows = torch.addmm(bias.to(dtype), x.to(dtype).permute(0, 2, 3, 1).reshape(-1, c), weight.t())
            rows = rows.view(b, h, w, -1)
            cols = rows.transpose(1, 2).contiguous()  # (B, W, H, 2C' + C): positions in column order
            out_rows, out_cols = criss_cross(rows.view(b * h, w, -1), cols.view(b * w, h, -1), self.planes)
            out_rows = out_rows.view(b, h, w, c).permute(0, 3, 1, 2)  # (B, C, H, W) views
            out_cols = out_cols.view(b, w, h, c).permute(0, 3, 2, 1)
        return torch.add(x, out_rows.to(x.dtype)).add_(out_cols.to(x.dtype))  # x's memory layout


class CrissCross(torch.autograd.Function):
    """The attention of `CrissCrossAttention` on projected features, with a hand-written backward.

    rows (B H, W, 2C' + C) holds [q; k; v] of each image row, cols (B W, H, 2C' + C) the same of each column.
    Energies: E_row = q k^T within a row (B H, W, W), E_col = q k^T within a column (B W, H, H) with -inf on its
    diagonal (the position itself is counted in the row only). One softmax per position over its W + H energies,
    formed in place in the two energy tensors with a shared maximum and sum (no concatenated copy);
    out_row = P_row v, out_col = P_col v. Backward, with G the output gradients: dv = P^T G, dP = G v^T,
    dE = P (dP - D) with D = G . out per position (summed over both parts), dq = dE k, dk = dE^T q. Only rows
    and the two P are kept; cols and the outputs are recomputed there (a copy and two small products).
    """

    @staticmethod
    def forward(ctx, rows, cols, planes):
        b_h, w, _ = rows.shape
        b_w, h, _ = cols.shape
        b = b_h // h
        (q_r, k_r, v_r), (q_c, k_c, v_c) = split_qkv(rows, planes), split_qkv(cols, planes)
        p_row = torch.bmm(q_r, k_r.transpose(1, 2))  # energies, then probabilities in place
        p_col = torch.bmm(q_c, k_c.transpose(1, 2))
        p_col.diagonal(dim1=1, dim2=2).fill_(float("-inf"))
        row4, col4 = p_row.view(b, h, w, w), p_col.view(b, w, h, h)  # [b, i, j, k] and [b, j, i, k]
        peak = torch.maximum(row4.amax(-1), col4.amax(-1).transpose(1, 2))  # (B, H, W); finite (the row part)
        row4.sub_(peak.unsqueeze(-1)).exp_()
        col4.sub_(peak.transpose(1, 2).unsqueeze(-1)).exp_()
        inverse = (row4.sum(-1) + col4.sum(-1).transpose(1, 2)).reciprocal_()
        row4.mul_(inverse.unsqueeze(-1))
        col4.mul_(inverse.transpose(1, 2).unsqueeze(-1))
        ctx.save_for_backward(rows, p_row, p_col)  # cols and the outputs are recomputed: less memory held
        ctx.planes = planes
        return torch.bmm(p_row, v_r), torch.bmm(p_col, v_c)

    @staticmethod
    def backward(ctx, grad_row, grad_col):
        rows, p_row, p_col = ctx.saved_tensors
        b_h, w, channels = rows.shape
        b_w, h = p_col.shape[:2]
        b, planes = b_h // h, ctx.planes
        grad_row, grad_col = grad_row.contiguous(), grad_col.contiguous()
        q_r, k_r, v_r = split_qkv(rows, planes)
        in_columns = rows.view(b, h, w, channels).transpose(1, 2)  # (B, W, H, 2C' + C) view
        v_c = in_columns[..., 2 * planes:].reshape(b_w, h, -1)  # copies: cols is not kept from the forward
        d = ((grad_row * torch.bmm(p_row, v_r)).sum(-1).view(b, h, w)  # D = G . out over both parts (B, H, W)
             + (grad_col * torch.bmm(p_col, v_c)).sum(-1).view(b, w, h).transpose(1, 2))
        grad_rows = part_backward(q_r, k_r, v_r, p_row, grad_row, d)
        qk_c = in_columns[..., :2 * planes].reshape(b_w, h, -1)  # only now: one part's temporaries at a time
        grad_cols = part_backward(qk_c[..., :planes], qk_c[..., planes:], v_c, p_col, grad_col, d.transpose(1, 2))
        return grad_rows, grad_cols, None


def criss_cross(rows, cols, planes):
    """`CrissCross`; when the forward is exported (torch.export, ONNX, jit.trace), the same operations out of
    place and without the autograd.Function."""
    if not exporting():
        return CrissCross.apply(rows, cols, planes)
    b_h, w, _ = rows.shape
    b_w, h, _ = cols.shape
    b = b_h // h
    (q_r, k_r, v_r), (q_c, k_c, v_c) = split_qkv(rows, planes), split_qkv(cols, planes)
    e_row = torch.bmm(q_r, k_r.transpose(1, 2))
    diagonal = torch.eye(h, dtype=torch.bool, device=cols.device)
    e_col = torch.bmm(q_c, k_c.transpose(1, 2)).masked_fill(diagonal, float("-inf"))
    row4, col4 = e_row.view(b, h, w, w), e_col.view(b, w, h, h)
    peak = torch.maximum(row4.amax(-1), col4.amax(-1).transpose(1, 2))
    row4 = (row4 - peak.unsqueeze(-1)).exp()
    col4 = (col4 - peak.transpose(1, 2).unsqueeze(-1)).exp()
    inverse = (row4.sum(-1) + col4.sum(-1).transpose(1, 2)).reciprocal()
    p_row = (row4 * inverse.unsqueeze(-1)).view(b_h, w, w)
    p_col = (col4 * inverse.transpose(1, 2).unsqueeze(-1)).view(b_w, h, h)
    return torch.bmm(p_row, v_r), torch.bmm(p_col, v_c)


def part_backward(q, k, v, p, grad, d):
    """dL/d[q; k; v] of one part (rows or columns) of `CrissCross`: dv = P^T G, dE = P (dP - D), dq = dE k,
    dk = dE^T q. d holds D per position in this part's order: (B, H, W) for rows, (B, W, H) for columns."""
    grad_e = torch.bmm(grad, v.transpose(1, 2))  # dP, then dE in place
    grad_e.view(*d.shape, -1).sub_(d.unsqueeze(-1)).mul_(p.view(*d.shape, -1))
    return torch.cat([torch.bmm(grad_e, k), torch.bmm(grad_e.transpose(1, 2), q), torch.bmm(p.transpose(1, 2), grad)],
                     dim=-1)


def split_qkv(features, planes):
    """Views q, k (..., C'), v (..., C) of features (..., 2C' + C)."""
    return features[..., :planes], features[..., planes:2 * planes], features[..., 2 * planes:]


class CCStage(nn.Sequential):
    """`stage_num` criss-cross attention modules in sequence (two give every position a full-image view).

    A plain nn.Sequential, as the reference stores it: its keys are `<k>.query_conv.weight`, ... (no `stages.`
    prefix), so the reference's checkpoints load unchanged.
    """

    def __init__(self, inplanes, planes, stage_num=1, dim=2, device=None, dtype=None):
        check_positive_int("inplanes (the block's channels C)", inplanes)
        check_positive_int("planes (the inner width C')", planes)
        check_positive_int("stage_num", stage_num)
        check_dim(dim)
        if dim != 2:
            raise ConfigError(f"cc block works on images only (dim 2), got dim={dim!r}; use another block for "
                              "sequences or video")
        super().__init__(*[CrissCrossAttention(inplanes, planes, device=device, dtype=dtype)
                           for _ in range(stage_num)])

    def reset_parameters(self):
        """Initialize the parameters as the constructor does (e.g. after building on 'meta' and `to_empty`)."""
        for module in self:
            module.reset_parameters()
