"""What the attention pictures are drawn from: every nonlocal block of a model, the input each block sees (captured by
a hook), and the dense attention matrix A (B, N, N) (rows = queries; N = H W, or T H W for a space-time block) of
the stage-based blocks and of criss-cross attention."""
import torch

from lib.cc import CrissCrossAttention
from lib.cgnl import CGNL
from lib.stage import NonlocalStage


def nonlocal_blocks(model):
    """[(module name, module)] of every nonlocal block: stage-based blocks, criss-cross modules (one per CC unit),
    CGNL blocks, in model order."""
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, (NonlocalStage, CrissCrossAttention, CGNL))]


def block_kind(module):
    return "cgnl" if isinstance(module, CGNL) else "cc" if isinstance(module, CrissCrossAttention) else "stage"


class _AllCaptured(Exception):
    """Raised by the last hook: the rest of the forward pass is not needed."""


def capture_inputs(model, modules, images):
    """{module name: its input (B, C, H, W) or (B, C, T, H, W)} for one forward of images (B, 3, h, w) or clips
    (B, 3, T, h, w), through forward pre-hooks;
    the forward stops once every module has seen its input."""
    captured = {}

    def hook(module, inputs, name):
        captured[name] = inputs[0].detach()
        if len(captured) == len(modules):
            raise _AllCaptured

    handles = [module.register_forward_pre_hook(lambda m, inputs, name=name: hook(m, inputs, name))
               for name, module in modules]
    try:
        with torch.no_grad():
            model(images)
    except _AllCaptured:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return captured


def inputs_per_image(loaded, modules, images):
    """[{module name: input (1, C, ...)}] per image (clip): one batch when the images share a size, else one by one."""
    tensors = [tensor for _, tensor, _ in images]
    if len({tuple(t.shape) for t in tensors}) == 1:
        captured = capture_inputs(loaded.model, modules, torch.stack(tensors).to(loaded.device))
        return [{name: x[k:k + 1] for name, x in captured.items()} for k in range(len(tensors))]
    return [capture_inputs(loaded.model, modules, t[None].to(loaded.device)) for t in tensors]


def criss_cross_attention(module, x):
    """A (B, N, N) of one CrissCrossAttention on x (B, C, H, W): row n holds the weights of query n.

    Query (i, j) attends to its column (k, j), k != i, and its row (i, k) with one softmax over the H + W
    energies query . key (docs/blocks.md, "At a glance": cc); everything else in its row of A is 0. So the module's
    output is x + gamma * (value A^T) on the (B, C, N) view.
    """
    with torch.no_grad():
        q, k = module.query_conv(x), module.key_conv(x)  # (B, C', H, W)
        b, _, h, w = q.shape
        energy_col = torch.einsum("bchw,bckw->bhwk", q, k)  # query (i, j) vs key (k, j)
        self_in_col = torch.eye(h, dtype=torch.bool, device=x.device)[:, None, :]  # (H, 1, H)
        energy_col = energy_col.masked_fill(self_in_col, float("-inf"))
        energy_row = torch.einsum("bchw,bchk->bhwk", q, k)  # query (i, j) vs key (i, k)
        att = torch.softmax(torch.cat([energy_col, energy_row], dim=-1), dim=-1)  # (B, H, W, H + W)
        eye_h, eye_w = (torch.eye(n, dtype=att.dtype, device=x.device) for n in (h, w))
        dense = torch.einsum("bijk,jl->bijkl", att[..., :h], eye_w)  # A[(i, j), (k, j)]
        dense = dense + torch.einsum("bijk,im->bijmk", att[..., h:], eye_h)  # A[(i, j), (i, k)]
    return dense.reshape(b, h * w, h * w)


def attention_matrix(module, x):
    """A (B, N, N) of a stage-based block or a CrissCrossAttention module for its input x (B, C, H, W), or of a
    space-time stage for x (B, C, T, H, W) (N = T H W, positions in (t, y, x) order)."""
    if isinstance(module, CrissCrossAttention):
        return criss_cross_attention(module, x)
    with torch.no_grad():
        return module.affinity(x).dense()
