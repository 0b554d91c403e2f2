"""The nonlocal "stage" shared by SNL, NL, A2, NS and DNL (design.md section 1)."""
import torch.nn as nn

from lib.affinity import AFFINITY_PATHS, build_affinity


def flatten_positions(x):
    """(B, C, H, W) -> (B, N, C), N = H * W: positions as rows, the layout the affinity multiplies."""
    b, c = x.shape[:2]
    return x.reshape(b, c, -1).transpose(1, 2)


def unflatten_positions(z, like):
    """(B, N, C) -> (B, C, H, W) with H, W taken from `like`."""
    b, _, h, w = like.shape
    return z.transpose(1, 2).reshape(b, -1, h, w)


class NonlocalStage(nn.Module):
    """Two 1x1 convs `t`, `p` build ONE affinity A from the stage input; `stage_num` units share it.

    Subclasses choose the unit (`unit_cls`) and their default affinity (`default_sys`, `default_norm`,
    `relu_kernel`). Parameter names (`t`, `p`, `stages.<k>.*`) are the reference's, so its state_dicts load.

    Args:
        inplanes: C, channels in and out.
        planes: C', channels of theta, phi and g (the reference uses int(C / div)).
        stage_num: number of units applied one after another with the same A.
        is_sys, is_norm: affinity options (design.md section 1); None = the block's default.
        zero_init: zero the units' output BN weight, so the stage starts as the identity.
        affinity_path: 'auto', 'dense' or 'factorized' (how A Z is computed; same numbers).
    """

    unit_cls = None
    default_sys = False
    default_norm = False
    relu_kernel = False  # the plain affinity is relu(theta) relu(phi)^T without softmax (A2)

    def __init__(self, inplanes, planes, stage_num=1, is_sys=None, is_norm=None, zero_init=False,
                 affinity_path="auto"):
        super().__init__()
        if stage_num < 1:
            raise ValueError(f"stage_num must be at least 1, got {stage_num}")
        self.is_sys = self.default_sys if is_sys is None else bool(is_sys)
        self.is_norm = self.default_norm if is_norm is None else bool(is_norm)
        self.affinity_path = affinity_path
        self.t = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.p = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.stages = nn.Sequential(*[self.unit_cls(inplanes, planes) for _ in range(stage_num)])
        if zero_init:
            for unit in self.stages:
                nn.init.zeros_(unit.bn.weight)

    @property
    def affinity_path(self):
        return self._affinity_path

    @affinity_path.setter
    def affinity_path(self, path):
        if path not in AFFINITY_PATHS:
            raise ValueError(f"affinity_path must be one of {AFFINITY_PATHS}, got {path!r}")
        if path == "factorized" and not (self.is_norm or self.relu_kernel):
            raise ValueError(f"{type(self).__name__} with a softmax affinity has no factorized form")
        self._affinity_path = path

    def affinity(self, x):
        """The affinity operator of input x (B, C, H, W); `.dense()` gives A (B, N, N), e.g. to visualize."""
        return build_affinity(self.t(x), self.p(x), self.is_sys, self.is_norm, self.relu_kernel,
                              self.affinity_path)

    def forward(self, x):  # (B, C, H, W) -> (B, C, H, W)
        att = self.affinity(x)
        for unit in self.stages:
            x = unit(x, att)
        return x

    def extra_repr(self):
        return f"is_sys={self.is_sys}, is_norm={self.is_norm}, affinity_path={self.affinity_path!r}"


class NonlocalUnit(nn.Module):
    """Base of the units: g : C -> C' and the output BatchNorm; `aggregate` gives A Z as (B, C', H, W)."""

    def __init__(self, inplanes, planes):
        super().__init__()
        self.g = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(inplanes)

    @staticmethod
    def aggregate(att, z):  # z (B, C', H, W) -> A Z (B, C', H, W)
        return unflatten_positions(att.apply(flatten_positions(z)), like=z).to(z.dtype)
