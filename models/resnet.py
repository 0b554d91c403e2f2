"""ImageNet ResNet-50/101/152 with nonlocal blocks (docs/classification.md, "Models").

Module names are torchvision's (conv1, bn1, maxpool, layer1..4, fc; blocks conv1..3, bn1..3, downsample), so a
torchvision ResNet state_dict loads once its residual-block indices are shifted past the inserted nonlocal
blocks (models.weights.load_torchvision_resnet).
"""
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from lib import build_nonlocal
from models.common import assemble_stage, nonlocal_width, residual_blocks, resolve_output_relu

STAGE_WIDTHS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(x4)-BN, plus the shortcut, then ReLU.

    The stride sits on the 3x3 conv, as in torchvision and the reference code.
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


def nonlocal_positions(nl_nums: int, depths: Sequence[int]) -> Dict[str, Tuple[int, ...]]:
    """Per stage, the 0-based residual-block indices after which a nonlocal block goes (docs/classification.md,
    "Models").

    nl_nums 1: layer3, right before its last residual block (after block n3 - 2).
    nl_nums 5: layer3 after blocks floor(k * n3 / 3) for k = 0, 1, 2, and layer4 after its first and last blocks.
    For ResNet-50 (n3 = 6) that is after blocks 0, 2, 4 of layer3, the reference's positions; the same rule
    spreads the three layer3 blocks evenly over the deeper stages: after 0, 7, 15 (ResNet-101, n3 = 23) and
    after 0, 12, 24 (ResNet-152, n3 = 36).
    """
    n3, n4 = depths[2], depths[3]
    if nl_nums == 1:
        return {"layer3": (n3 - 2,)}
    if nl_nums == 5:
        return {"layer3": tuple(k * n3 // 3 for k in range(3)), "layer4": (0, n4 - 1)}
    return {}


class ResNet(nn.Module):
    """torchvision-layout ResNet-50/101/152 plus dropout(0.5) before fc, with nl_nums (0, 1 or 5) nonlocal blocks.

    Each block has width C = the stage's output width and C' = int(C / div); is_sys / is_norm go to the block
    (None = the block's default). Init (reference): kaiming normal (fan_out, relu) for every conv, norm layers
    weight 1 / bias 0, then every BN / GroupNorm inside the nonlocal blocks zeroed so each starts as the identity.
    output_relu (stage-based blocks): None / False = Y = X + BN(.), which starts as the identity and learns;
    True = X + relu(BN(.)), the reference's unit, whose BN then keeps weight 1 (the reference zeroes it there
    too, and such a block gets no gradient, ever: docs/blocks.md, "output_relu").
    """

    ARCHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
    NL_NUMS = (0, 1, 5)

    def __init__(self, depth: int, num_classes: int, nl_type: Optional[str] = None, nl_nums: int = 1,
                 stage_num: int = 1, div: float = 2, is_sys: Optional[bool] = None,
                 is_norm: Optional[bool] = None, order: Optional[int] = None, output_relu: Optional[bool] = None):
        super().__init__()
        self.depth = depth
        output_relu = resolve_output_relu(nl_type, output_relu, zero_init=True)
        depths = self.ARCHS[depth]
        positions = nonlocal_positions(nl_nums, depths) if nl_type is not None else {}
        self.nonlocal_paths = []
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = 64
        for stage, (width, stride, count) in enumerate(zip(STAGE_WIDTHS, STAGE_STRIDES, depths), start=1):
            blocks, outplanes = residual_blocks(Bottleneck, inplanes, width, stride, count)

            def make_nonlocal():
                return build_nonlocal(nl_type, outplanes, nonlocal_width(outplanes, div), stage_num=stage_num,
                                      is_sys=is_sys, is_norm=is_norm, order=order, output_relu=output_relu,
                                      zero_init=not output_relu)

            name = f"layer{stage}"
            setattr(self, name, assemble_stage(blocks, positions.get(name, ()), make_nonlocal, name,
                                               self.nonlocal_paths))
            inplanes = outplanes
        self.nonlocal_paths = tuple(self.nonlocal_paths)
        # torchvision's adaptive pooling; the reference's AvgPool2d(7) gives the same numbers for 224 inputs.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(inplanes, num_classes)
        self._init_weights(identity=not output_relu)

    def _init_weights(self, identity: bool = True) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:  # only the nonlocal blocks' convs have a bias
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # The loop above also reset the blocks' norm layers to 1; zero them again so that every block starts
        # as the identity and a pretrained backbone keeps its outputs (criss-cross: its gamma is already 0).
        # Not with the output ReLU: relu(0) would give the block no gradient at all (docs/blocks.md, "output_relu").
        for path in self.nonlocal_paths if identity else ():
            for module in self.get_submodule(path).modules():
                if isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                    nn.init.zeros_(module.weight)
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(self.dropout(x))
