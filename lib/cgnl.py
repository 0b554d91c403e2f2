"""Compact generalized nonlocal block (Yue et al., NeurIPS 2018), Gaussian RBF kernel by Taylor expansion."""
import math

import torch
import torch.nn as nn

from .affinity import compiling, exporting, full_precision, upcast
from .errors import ConfigError, check_positive_int
from .pointwise import project

CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
SPATIAL_NAMES = {1: "L", 2: "H, W", 3: "T, H, W"}


def check_input(x, name, channels, dim):
    """One clear line (ConfigError) for an input of the wrong rank or channel count, or an empty one."""
    if x.dim() != dim + 2 or x.shape[1] != channels:
        raise ConfigError(f"{name} block expects input (B, {channels}, {SPATIAL_NAMES[dim]}), got {tuple(x.shape)}")
    if x.numel() == 0:  # else an error deep inside the kernel's reshapes
        raise ConfigError(f"{name} block got an empty input (shape {tuple(x.shape)}): every dimension must be "
                          f"at least 1")


class CGNL(nn.Module):
    """Y = X + GN(z(sum_k a_k T_k)) (docs/blocks.md; the CGNL paper's Taylor-expanded Gaussian kernel).

    t, p, g : C -> C' are flattened over (C', *spatial) per sample; T_k = alpha_k t^k, P_k = alpha_k p^k
    (element-wise powers, k = 0..order), a_k = <P_k, g>, alpha_k = sqrt(beta (2 gamma)^k / k!),
    beta = exp(-2 gamma). The reference's groups = 1 is the only setting: GroupNorm(1, C). No ReLU.

    Args:
        inplanes: C.  planes: C'.  order: Taylor order K.  gamma: the RBF kernel's width.
        zero_init: zero the GroupNorm weight, so the block starts as the identity.
        dim: spatial dims of the input: 1 (B, C, L), 2 (B, C, H, W) or 3 (B, C, T, H, W); 1x1 convolutions of
            that dim, the same parameter names (the weights carry dim trailing singleton dims).
        device, dtype: where and in which dtype the parameters are created (as for torch.nn layers).
    """

    def __init__(self, inplanes, planes, order=2, gamma=1e-4, zero_init=False, dim=2, device=None, dtype=None):
        super().__init__()
        check_positive_int("inplanes (the block's channels C)", inplanes)
        check_positive_int("planes (the inner width C')", planes)
        if dim not in CONVS:
            raise ConfigError(f"cgnl block: dim must be 1, 2 or 3, got {dim!r}")
        self.order, self.dim, self.inplanes, self.zero_init = order, dim, inplanes, zero_init
        conv, factory = CONVS[dim], dict(kernel_size=1, bias=False, device=device, dtype=dtype)
        self.t = conv(inplanes, planes, **factory)
        self.p = conv(inplanes, planes, **factory)
        self.g = conv(inplanes, planes, **factory)
        self.z = conv(planes, inplanes, **factory)
        self.gn = nn.GroupNorm(num_groups=1, num_channels=inplanes, device=device, dtype=dtype)
        beta = math.exp(-2 * gamma)
        self.alpha = [math.sqrt(beta * (2 * gamma) ** k / math.factorial(k)) for k in range(order + 1)]
        # alpha_k^2 on the block's device, so that neither pass copies a Python list to the device (a blocking
        # host-to-device copy per block per pass on GPU). Not persistent: state_dict keys stay the reference's.
        self.register_buffer("taylor_weights", self._taylor_weights(self.t.weight.device), persistent=False)
        if zero_init:
            nn.init.zeros_(self.gn.weight)

    def _taylor_weights(self, device):
        """alpha_k^2 (k = 0..K) as a tensor on `device`, float64 where the device has it (the smallest of them,
        ~(2 gamma)^K / K!, is below float16's range; the kernel casts them to its compute dtype)."""
        dtype = torch.float32 if torch.device(device).type == "mps" else torch.float64
        return torch.tensor([a * a for a in self.alpha], dtype=dtype, device=device)

    def _apply(self, fn, *args, **kwargs):
        # .to(dtype) / .half() would round the buffer and to_empty() would leave it uninitialized: recompute it
        # (once per move or cast, not per step) in full precision on the buffer's new device.
        module = super()._apply(fn, *args, **kwargs)
        self.taylor_weights = self._taylor_weights(self.taylor_weights.device)
        return module

    def reset_parameters(self):
        """Initialize the parameters as the constructor does (e.g. after building on 'meta' and `to_empty`)."""
        for module in (self.t, self.p, self.g, self.z, self.gn):
            module.reset_parameters()
        if self.zero_init:
            nn.init.zeros_(self.gn.weight)

    def forward(self, x):  # (B, C, *spatial) -> same
        check_input(x, "cgnl", self.inplanes, self.dim)
        weights = torch.cat([self.t.weight, self.p.weight, self.g.weight]).flatten(1)  # (3C', C)
        features = project(x, weights)  # [t; p; g] (B, 3C', N) from one product
        with full_precision(x.device.type):
            out = taylor_kernel(upcast(features), self.taylor_weights).to(features.dtype)  # (B, C', N)
        return x + self.gn(project(out, self.z.weight.flatten(1)).reshape(x.shape))

    def extra_repr(self):
        return f"order={self.order}, dim={self.dim}"


class TaylorKernel(torch.autograd.Function):
    """out = sum_k c_k t^k with c_k = alpha_k^2 <p^k, g> per sample, from features [t; p; g] (B, 3C', N).

    The same numbers as the powers written out (a_k T_k = alpha_k^2 <p^k, g> t^k), evaluated by Horner's rule,
    and a hand-written backward that keeps only the features and the (B, K+1) coefficients: with
    G = dL/dout, dL/dc_k = <G, t^k> and e_k = alpha_k^2 dL/dc_k,
        dL/dt = G sum_k k c_k t^(k-1),   dL/dp = g sum_k k e_k p^(k-1),   dL/dg = sum_k e_k p^k.
    """

    @staticmethod
    def forward(ctx, features, weights):
        out, coefficients = taylor_forward(features, weights)
        ctx.save_for_backward(features, coefficients)
        ctx.weights = weights  # (K+1,) already on the device: no host-to-device copy in the backward
        return out

    @staticmethod
    def backward(ctx, grad_out):
        features, coefficients = ctx.saved_tensors
        t, p, g = features.chunk(3, dim=1)
        order = coefficients.shape[1] - 1
        grad = torch.empty_like(features)
        grad_t, grad_p, grad_g = grad.chunk(3, dim=1)
        scaled = torch.stack(powers_dot(t, grad_out, order + 1), dim=1) * ctx.weights.to(coefficients.dtype)
        polyval(p, scaled, out=grad_g)
        if order == 0:
            grad_t.zero_()
            grad_p.zero_()
        else:
            polyval(t, derivative(coefficients), out=grad_t).mul_(grad_out)
            polyval(p, derivative(scaled), out=grad_p).mul_(g)
        return grad, None


def taylor_kernel(features, weights):
    """See `TaylorKernel`: features [t; p; g] (B, 3C', N), weights alpha_k^2 (k = 0..K) -> (B, C', N); weights a
    tensor on features' device (CGNL's buffer; a list or tuple is turned into one, which costs a copy).
    When the forward is exported or compiled, the same operations without the autograd.Function (TorchDynamo
    cannot trace its backward's `out=` writes into views); autograd or the compiler derives the backward."""
    if not torch.is_tensor(weights):
        weights = torch.tensor(list(weights), dtype=features.dtype, device=features.device)
    if exporting() or compiling():
        return taylor_forward(features, weights)[0]
    return TaylorKernel.apply(features.contiguous(), weights)


def taylor_forward(features, weights):
    """(out, coefficients (B, K+1)) of `TaylorKernel`'s forward, out of place; weights a (K+1,) tensor."""
    t, p, g = features.chunk(3, dim=1)
    moments = torch.stack(powers_dot(p, g, weights.shape[0]), dim=1)  # (B, K+1): <p^k, g>
    coefficients = moments * weights.to(moments.dtype)
    return polyval(t, coefficients), coefficients


def powers_dot(x, y, count):
    """[<x^k, y> per sample for k < count] as (B,) tensors, x, y (B, C', N)."""
    dots, power = [y.sum(dim=(1, 2))], y
    for _ in range(1, count):
        power = power * x
        dots.append(power.sum(dim=(1, 2)))
    return dots


def derivative(coefficients):
    """The coefficients (B, K) of d/dx sum_k c_k x^k, from c (B, K+1)."""
    k = torch.arange(1, coefficients.shape[1], dtype=coefficients.dtype, device=coefficients.device)
    return coefficients[:, 1:] * k


def polyval(x, coefficients, out=None):
    """sum_k c[:, k] x^k by Horner's rule, x (B, C', N), c (B, K+1); into `out` when given (it may be a view),
    else out of place (the same operations; what autograd and graph capture can follow)."""
    c = coefficients[:, :, None, None]  # (B, K+1, 1, 1): c[:, k] broadcasts over (C', N)
    order = coefficients.shape[1] - 1
    if out is None:
        if order == 0:
            return c[:, 0].expand_as(x).clone()
        out = torch.addcmul(c[:, order - 1], x, c[:, order])
        for k in range(order - 2, -1, -1):
            out = torch.addcmul(c[:, k], out, x)
        return out
    if order == 0:
        return out.copy_(c[:, 0].expand_as(x))
    torch.addcmul(c[:, order - 1], x, c[:, order], out=out)
    for k in range(order - 2, -1, -1):
        torch.addcmul(c[:, k], out, x, out=out)
    return out
