"""Semantic segmentation: a dilated torchvision ResNet with a nonlocal decode head (docs/segmentation.md).

    model = build_segmentor("resnet", "50", num_classes=19, nl_type="snl", pretrained="resnet50.pth")
    logits = model(images)["out"]      # (B, 19, H, W), the input's size; in training also ["aux"]

The authors' mmsegmentation config (SNL head on ResNet-50-D8, Cityscapes) rebuilt from torchvision pieces:
- backbone: torchvision's ResNet with replace_stride_with_dilation=[False, True, True] (output stride 8:
  layer3 dilation 2, layer4 dilation 4);
- decode head on layer4: conv3x3 2048 -> 512 + BN + ReLU, the nonlocal block (C = 512, C' = int(512 / div)),
  conv3x3 512 -> 512 + BN + ReLU, then conv3x3 on [head input, that output] (2560 -> 512) + BN + ReLU,
  dropout 0.1, conv1x1 -> num_classes;
- auxiliary FCN head on layer3 (training only): conv3x3 1024 -> 256 + BN + ReLU, dropout 0.1, conv1x1;
- logits upsampled bilinearly (align_corners=False) to the input size.
nl_type None (or "none") gives the plain FCN head: the two convs follow each other directly.
"""
import os
from typing import Optional, Union

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from lib import NONLOCAL_BLOCKS, build_nonlocal
from lib.errors import ConfigError
from models.common import build_on, nonlocal_width, resolve_output_relu
from models.weights import _download_torchvision, _mismatch, _read_state_dict, strip_module_prefix

TORCHVISION_RESNETS = {50: torchvision.models.resnet50, 101: torchvision.models.resnet101}
HEAD_CHANNELS = 512
AUX_CHANNELS = 256
DROPOUT = 0.1
# The stride-16 and stride-32 stages keep stride 8 and dilate their 3x3 convs instead (DeepLab's "D8").
DILATION = [False, True, True]


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    """mmcv's ConvModule: conv (no bias) + BN + ReLU; names conv / bn so state_dicts read like mmseg's."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True))


class DilatedResNet(nn.Module):
    """torchvision's ResNet stem and stages at output stride 8; returns (layer3, layer4) features.

    Module names are torchvision's (conv1, bn1, layer1..4), so a torchvision ResNet state_dict without its fc
    loads as it is.
    """

    def __init__(self, depth: int):
        super().__init__()
        resnet = TORCHVISION_RESNETS[depth](weights=None, replace_stride_with_dilation=DILATION)
        self.depth = depth
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4

    def forward(self, x):  # (B, 3, H, W) -> (B, 1024, H/8, W/8), (B, 2048, H/8, W/8)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c3 = self.layer3(self.layer2(self.layer1(x)))
        return c3, self.layer4(c3)


class NonlocalHead(nn.Module):
    """mmseg's FCN head with a nonlocal block between its two convs, concat_input, dropout, 1x1 classifier.

    block None: mmseg's plain FCNHead (num_convs 2, concat_input True).
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, block: Optional[nn.Module] = None):
        super().__init__()
        self.conv_in = conv_bn_relu(in_channels, channels)
        self.block = block if block is not None else nn.Identity()
        self.conv_out = conv_bn_relu(channels, channels)
        self.conv_cat = conv_bn_relu(in_channels + channels, channels)
        self.dropout = nn.Dropout2d(DROPOUT)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, x):  # (B, in_channels, h, w) -> (B, num_classes, h, w)
        out = self.conv_out(self.block(self.conv_in(x)))
        out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.classifier(self.dropout(out))


class AuxHead(nn.Module):
    """mmseg's auxiliary FCNHead: one conv3x3 + BN + ReLU, no concat, dropout 0.1, 1x1 classifier."""

    def __init__(self, in_channels: int, channels: int, num_classes: int):
        super().__init__()
        self.conv = conv_bn_relu(in_channels, channels)
        self.dropout = nn.Dropout2d(DROPOUT)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, x):
        return self.classifier(self.dropout(self.conv(x)))


class Segmentor(nn.Module):
    """backbone -> decode head (+ auxiliary head in training) -> logits at the input size.

    forward returns {"out": (B, num_classes, H, W)} and, in training mode with an aux head, "aux" as well.
    """

    def __init__(self, backbone: DilatedResNet, head: NonlocalHead, aux_head: Optional[AuxHead] = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head

    def forward(self, x):  # (B, 3, H, W)
        size = x.shape[-2:]
        c3, c4 = self.backbone(x)
        result = {"out": F.interpolate(self.head(c4), size=size, mode="bilinear", align_corners=False)}
        if self.training and self.aux_head is not None:
            result["aux"] = F.interpolate(self.aux_head(c3), size=size, mode="bilinear", align_corners=False)
        return result


def init_head(head: nn.Module, skip: Optional[nn.Module] = None) -> None:
    """mmseg's init: kaiming-normal (fan_out) convs, BN weight 1 / bias 0, the classifier normal(0, 0.01).

    The nonlocal block (skip) keeps its own init: zero-initialized, it starts as the identity.
    """
    skipped = set(skip.modules()) if skip is not None else set()
    for module in head.modules():
        if module in skipped:
            continue
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    nn.init.normal_(head.classifier.weight, mean=0.0, std=0.01)
    nn.init.zeros_(head.classifier.bias)


def load_backbone_weights(backbone: DilatedResNet, pretrained: Union[bool, str, os.PathLike]) -> None:
    """torchvision ImageNet weights (True: download; a path: a torchvision-format state_dict file) into the
    backbone; the classifier (fc) is dropped. Anything else that does not fit raises a one-line ConfigError."""
    from_file = isinstance(pretrained, (str, os.PathLike))
    source = _read_state_dict(pretrained) if from_file else _download_torchvision(backbone.depth)
    source = {k: v for k, v in strip_module_prefix(source).items() if k.split(".")[0] != "fc"}
    problems = _mismatch(backbone.state_dict(), source)
    if problems:
        raise ConfigError(f"pretrained weights are not a torchvision ResNet-{backbone.depth} state_dict: "
                          f"{'; '.join(problems)}")
    backbone.load_state_dict(source)


def build_segmentor(backbone: str = "resnet", arch: Union[int, str] = "50", num_classes: int = 19,
                    nl_type: Optional[str] = "snl", stage_num: int = 1, div: float = 2,
                    is_sys: Optional[bool] = None, is_norm: Optional[bool] = None,
                    pretrained: Union[None, bool, str] = None, aux: bool = True,
                    output_relu: Optional[bool] = None, device=None, dtype=None) -> Segmentor:
    """The segmentor of the module docstring; model.build_args rebuilds it (pretrained, device and dtype are left
    out of them: a checkpoint's own weights replace it). output_relu (stage-based blocks): None / False = the head
    block is Y = X + BN(.) and starts as the identity (BN at 0); True = X + relu(BN(.)) with BN weight 1, since
    from 0 that block would get no gradient (docs/blocks.md, "output_relu"). device, dtype: where and in which
    dtype the parameters are created. Raises ConfigError for an unknown name or value."""
    if backbone != "resnet":
        raise ConfigError(f"unknown segmentation backbone {backbone!r}; valid: resnet")
    try:
        depth = int(str(arch).strip())
    except ValueError:
        depth = None
    if depth not in TORCHVISION_RESNETS:
        raise ConfigError(f"unknown arch {arch!r} for the segmentation backbone; valid: "
                          f"{', '.join(map(str, TORCHVISION_RESNETS))}")
    if nl_type is not None and str(nl_type).lower() in ("none", "base"):
        nl_type = None
    if nl_type is not None and nl_type not in NONLOCAL_BLOCKS:
        raise ConfigError(f"unknown nl_type {nl_type!r}; valid: {', '.join(NONLOCAL_BLOCKS)} (or none)")
    if isinstance(stage_num, bool) or not isinstance(stage_num, int) or stage_num < 1:
        raise ConfigError(f"stage_num must be a positive integer, got {stage_num!r}")
    if not div > 0:
        raise ConfigError(f"div must be positive, got {div!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    output_relu = resolve_output_relu(nl_type, output_relu, zero_init=True)
    model = build_on(device, dtype, _segmentor, depth, num_classes, nl_type, stage_num, div, is_sys, is_norm, aux,
                     output_relu)
    if pretrained:
        load_backbone_weights(model.backbone, pretrained)
    model.build_args = dict(backbone=backbone, arch=depth, num_classes=num_classes, nl_type=nl_type,
                            stage_num=stage_num, div=div, is_sys=is_sys, is_norm=is_norm, aux=bool(aux),
                            output_relu=output_relu)
    return model


def _segmentor(depth, num_classes, nl_type, stage_num, div, is_sys, is_norm, aux, output_relu):
    net = DilatedResNet(depth)  # torchvision's init (kaiming fan_out convs, BN 1 / 0)
    block = None
    if nl_type is not None:
        block = build_nonlocal(nl_type, HEAD_CHANNELS, nonlocal_width(HEAD_CHANNELS, div), stage_num=stage_num,
                               is_sys=is_sys, is_norm=is_norm, zero_init=not output_relu, output_relu=output_relu)
    head = NonlocalHead(2048, HEAD_CHANNELS, num_classes, block)
    init_head(head, skip=block)
    aux_head = None
    if aux:
        aux_head = AuxHead(1024, AUX_CHANNELS, num_classes)
        init_head(aux_head)
    return Segmentor(net, head, aux_head)


def load_segmentor_state(model: nn.Module, state_dict) -> None:
    """Strict loading of a checkpoint's state_dict (a DDP "module." prefix is stripped), or a one-line
    ConfigError naming what differs."""
    model = getattr(model, "module", model)
    state_dict = strip_module_prefix(state_dict)
    problems = _mismatch(model.state_dict(), state_dict)
    if problems:
        args = getattr(model, "build_args", {})
        described = f"{args.get('backbone')}{args.get('arch')} + {args.get('nl_type') or 'plain'} head" if args else ""
        raise ConfigError(f"checkpoint does not fit the segmentor {described}: {'; '.join(problems)}")
    model.load_state_dict(state_dict)
