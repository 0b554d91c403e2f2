"""Pre-activation ResNet for CIFAR with nonlocal blocks (docs/classification.md, "Models").

Module names follow the reference code (conv, layer1..3, bn1, fc1, bn2, fc2; blocks bn1, conv1, bn2, conv2,
bn3, conv3, downsample) so that a reference state_dict loads here once its unused conv1/maxpool/fc entries are
dropped (models.weights.load_state_dict_checked).
"""
from typing import Optional, Sequence

import torch
from torch import nn

from lib import build_nonlocal
from models.common import assemble_stage, nonlocal_width, residual_blocks

STAGE_WIDTHS = (16, 32, 64)
STAGE_STRIDES = (1, 2, 2)
# The nonlocal block goes right after the 2nd residual block of a chosen stage (0-based index 1), so it sits
# at index 2 of the stage's Sequential, as in the reference.
NONLOCAL_AFTER_BLOCK = 1


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class PreActBasicBlock(nn.Module):
    """BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3, plus the shortcut (docs/classification.md, "Models")."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        # The shortcut takes the raw input, not the pre-activated one (as the reference).
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(x4), plus the shortcut (docs/classification.md,
    "Models")."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class PreResNet(nn.Module):
    """CIFAR PreResNet-20/56/110 with a nonlocal block in each stage listed in nl_layer.

    Depths are the reference's names: 20 = Basic [3,3,3]; 56 = Bottleneck [9,9,9] (an 83-layer network);
    110 = Bottleneck [18,18,18] (a 164-layer network). nl_type None or nl_nums 0 gives the plain network;
    nl_nums 1 puts one block in each stage of nl_layer (1, 2 and/or 3) at index 2 of that stage, of width
    C = the stage's output width and C' = int(C / div). is_sys / is_norm go to the block (None = the block's
    default; the reference always built normalized + symmetric here, so pass both True to reproduce it);
    output_relu too (None: the block's default, the reference's form).
    No custom init: the reference sets none for PreResNet, so PyTorch's defaults apply, and the nonlocal block
    is not zero-initialized (the reference zero-initializes them for ResNet only).
    """

    ARCHS = {20: (PreActBasicBlock, (3, 3, 3)), 56: (PreActBottleneck, (9, 9, 9)),
             110: (PreActBottleneck, (18, 18, 18))}
    NL_NUMS = (0, 1)
    # Modules the reference's training script bolts onto CIFAR models and never uses (docs/deviations.md, item 5);
    # their checkpoint entries are dropped on load.
    REFERENCE_UNUSED_MODULES = ("conv1", "maxpool", "fc")

    def __init__(self, depth: int, num_classes: int, nl_type: Optional[str] = None, nl_nums: int = 1,
                 nl_layer: Sequence[int] = (1,), stage_num: int = 1, div: float = 2,
                 is_sys: Optional[bool] = None, is_norm: Optional[bool] = None, order: Optional[int] = None,
                 output_relu: Optional[bool] = None):
        super().__init__()
        self.depth = depth
        block, depths = self.ARCHS[depth]
        with_nonlocal = nl_type is not None and nl_nums > 0
        self.nonlocal_paths = []
        self.conv = nn.Conv2d(3, STAGE_WIDTHS[0], kernel_size=3, padding=1, bias=False)
        inplanes = STAGE_WIDTHS[0]
        for stage, (width, stride, count) in enumerate(zip(STAGE_WIDTHS, STAGE_STRIDES, depths), start=1):
            blocks, outplanes = residual_blocks(block, inplanes, width, stride, count)
            insert_after = (NONLOCAL_AFTER_BLOCK,) if with_nonlocal and stage in nl_layer else ()

            def make_nonlocal():
                return build_nonlocal(nl_type, outplanes, nonlocal_width(outplanes, div), stage_num=stage_num,
                                      is_sys=is_sys, is_norm=is_norm, order=order, output_relu=output_relu)

            setattr(self, f"layer{stage}",
                    assemble_stage(blocks, insert_after, make_nonlocal, f"layer{stage}", self.nonlocal_paths))
            inplanes = outplanes
        self.nonlocal_paths = tuple(self.nonlocal_paths)

        # Head of the reference: BN-ReLU-conv1x1 ("fc1")-BN-ReLU-avgpool-flatten-dropout-Linear ("fc2").
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.fc1 = nn.Conv2d(inplanes, inplanes, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(inplanes)
        # The reference uses AvgPool2d(8) on the 8x8 map of a 32x32 input; adaptive pooling gives the same
        # numbers there and also accepts other input sizes.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.5)
        self.fc2 = nn.Linear(inplanes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.fc1(self.relu(self.bn1(x)))
        x = self.avgpool(self.relu(self.bn2(x)))
        return self.fc2(self.dropout(torch.flatten(x, 1)))
