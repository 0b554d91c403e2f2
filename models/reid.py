"""Person re-identification networks (docs/reid.md): a torchvision ResNet-18/34/50/101 trunk with nonlocal blocks,
last stride 1 or 2, average or GeM pooling and a BNNeck head; for video, frames through the 2-D trunk with the
nonlocal blocks over the clip's space-time volume and temporal pooling, or the video task's 3-D ResNet.

    model = build_model("reid", 50, num_classes=751, nl_type="snl", nl_nums=5, pooling="gem", pretrained=True)
    logits, feature = model(images)          # training: (B, classes) and the pre-BN (B, D) feature (triplet loss)
    feature = model.eval()(images)           # evaluation: the post-BN (B, D) feature (BoT's test feature)
    model = build_model("reid_video", 50, num_classes=625, nl_type="snl", nl_nums=1, temporal="attention")
    logits, feature = model(clips)           # clips (B, T, 3, H, W)

Sources: Luo et al., "Bag of Tricks and a Strong Baseline for Deep Person Re-identification", CVPRW 2019 (BNNeck,
last stride 1); Radenovic et al., TPAMI 2019 (GeM); Gao & Nevatia 2018, "Revisiting Temporal Modeling for
Video-based Person ReID" (temporal pooling TP and attention TA); Ye et al., TPAMI 2021 (AGW's block positions).
"""
import os
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from lib import build_nonlocal
from lib.errors import ConfigError
from models.common import assemble_stage, build_on, nonlocal_width, resolve_output_relu
from models.video import ZeroPadShortcut, build_video_model, init_nonlocal_blocks
from models.weights import _read_state_dict, load_shifted_state_dict

REID_BACKBONES = ("reid", "reid_video")
REID_ARCHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
POOLINGS = ("avg", "gem")
TEMPORAL = ("avg", "attention")
VIDEO_TRUNKS = ("resnet", "resnet3d")
NL_NUMS = (0, 1, 5)
# Gao & Nevatia's temporal-attention width (their middle_dim).
ATTENTION_WIDTH = 256


def reid_positions(nl_nums: int, depths: Sequence[int]) -> Dict[str, Tuple[int, ...]]:
    """0-based residual-block indices after which a block goes. nl_nums 1: layer3 before its last block (SNL's
    classification place). nl_nums 5: AGW's place (Ye et al., TPAMI 2021): after the last two blocks of layer2
    and the last three of layer3 (ResNet-18: its two blocks in each, four in all)."""
    n2, n3 = depths[1], depths[2]
    if nl_nums == 1:
        return {"layer3": (n3 - 2,)}
    if nl_nums == 5:
        return {"layer2": tuple(range(n2 - min(n2, 2), n2)), "layer3": tuple(range(n3 - min(n3, 3), n3))}
    return {}


def _torchvision_weights(depth: int):
    return getattr(torchvision.models, f"ResNet{depth}_Weights").IMAGENET1K_V1


def load_imagenet_trunk(trunk: nn.Module, pretrained: Union[bool, str, os.PathLike]) -> None:
    """torchvision's ImageNet ResNet weights (True: download, or torch's cache; a str: a state_dict file) into the
    trunk, residual-block indices shifted past the nonlocal blocks, fc dropped. Offline without a cached copy: one
    ConfigError line saying so."""
    if isinstance(pretrained, (str, os.PathLike)):
        source = _read_state_dict(pretrained)
    else:
        weights = _torchvision_weights(trunk.depth)
        try:
            source = weights.get_state_dict(progress=True, check_hash=True)
        except OSError as error:  # URLError, socket and SSL errors are all OSErrors
            raise ConfigError(f"could not download torchvision's ResNet-{trunk.depth} ImageNet weights "
                              f"({weights.url}): {error}; pass a local state_dict file instead") from None
    source = {k: v for k, v in source.items() if not k.startswith("fc.")}
    load_shifted_state_dict(trunk, source, f"a torchvision ResNet-{trunk.depth} state_dict")


class ResNetTrunk(nn.Module):
    """torchvision's ResNet-18/34/50/101 without avgpool / fc (its module names, so its weights load), with
    nonlocal blocks inside layer1..4 (models.common.assemble_stage). frames > 0 (video): the input is (B*T, C, H, W)
    and each nonlocal block sees (B, C, T, H, W), the clip as one space-time volume (dim-3 blocks)."""

    def __init__(self, depth: int, positions: Dict[str, Tuple[int, ...]], make_nonlocal, last_stride: int = 1):
        super().__init__()
        net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        self.depth = depth
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        paths = []
        for stage in range(1, 5):
            name = f"layer{stage}"
            blocks = list(getattr(net, name))
            width = _out_channels(blocks[-1])
            setattr(self, name, assemble_stage(blocks, positions.get(name, ()), lambda c=width: make_nonlocal(c),
                                               name, paths))
        self.nonlocal_paths = tuple(paths)
        self.out_channels = _out_channels(blocks[-1])
        if last_stride == 1:
            _unstride(self.layer4[0])
        self.frames = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in range(1, 5):
            name = f"layer{stage}"
            for index, module in enumerate(getattr(self, name)):
                if self.frames and f"{name}.{index}" in self.nonlocal_paths:
                    clips, channels, height, width = x.shape
                    volume = x.view(clips // self.frames, self.frames, channels, height, width).transpose(1, 2)
                    x = module(volume).transpose(1, 2).reshape(clips, channels, height, width)
                else:
                    x = module(x)
        return x


def _out_channels(block: nn.Module) -> int:
    return (block.bn3 if hasattr(block, "bn3") else block.bn2).num_features


def _unstride(block: nn.Module) -> None:
    """Last stride 1 (BoT): the first block of layer4 keeps the resolution (spatially; a 3-D block keeps
    its temporal stride), doubling the final map's height and width."""
    for module in block.modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d)) and max(module.stride) > 1:
            module.stride = (module.stride[0], 1, 1) if isinstance(module, nn.Conv3d) else (1, 1)
        elif isinstance(module, ZeroPadShortcut):
            module.stride = (module.stride, 1, 1)


class GeM(nn.Module):
    """Generalized-mean pooling (Radenovic et al., TPAMI 2019): (mean_x clamp(x, eps)^p)^(1/p) over every
    position, p learned (init 3). p = 1: average pooling; p -> inf: max pooling."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        self.p = nn.Parameter(torch.full((1,), float(p), device=device, dtype=dtype))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).flatten(2).mean(-1).pow(1.0 / self.p)


class AveragePool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).mean(-1)


class TemporalAttention(nn.Module):
    """Gao & Nevatia's TA: per-frame scores from the frame feature (a linear layer to 256, ReLU, a temporal
    conv of width 3 to one score, ReLU), softmax over the T frames, weighted sum of the frame features.
    Their spatial conv spans the whole 7 x 4 map of a 224 x 112 input; a linear layer on the pooled feature keeps
    it independent of the input size (docs/reid.md, deviations)."""

    def __init__(self, channels: int, width: int = ATTENTION_WIDTH, device=None, dtype=None):
        super().__init__()
        self.spatial = nn.Linear(channels, width, device=device, dtype=dtype)
        self.temporal = nn.Conv1d(width, 1, kernel_size=3, padding=1, device=device, dtype=dtype)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, D)
        scores = F.relu(self.temporal(F.relu(self.spatial(frames)).transpose(1, 2)))  # (B, 1, T)
        return (torch.softmax(scores, dim=-1).transpose(1, 2) * frames).sum(1)


class BNNeck(nn.Module):
    """BatchNorm1d with a frozen zero bias, then a bias-free classifier (BoT; init as its code: BN weight
    1, classifier weights normal with std 0.001)."""

    def __init__(self, channels: int, num_classes: int, device=None, dtype=None):
        super().__init__()
        self.bn = nn.BatchNorm1d(channels, device=device, dtype=dtype)
        self.bn.bias.requires_grad_(False)
        self.classifier = nn.Linear(channels, num_classes, bias=False, device=device, dtype=dtype)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, feature: torch.Tensor):
        normed = self.bn(feature)
        return (self.classifier(normed), feature) if self.training else normed


class ReidNet(nn.Module):
    """trunk -> pooling -> (video: temporal pooling) -> BNNeck. Training: (logits, pre-BN feature); eval: the
    post-BN feature. Image input (B, 3, H, W); video input (B, T, 3, H, W)."""

    def __init__(self, trunk: nn.Module, channels: int, num_classes: int, pooling: str = "avg",
                 video: bool = False, temporal: str = "avg", volume_trunk: bool = False):
        super().__init__()
        self.trunk = trunk
        self.video, self.volume_trunk = video, volume_trunk
        self.pool = GeM() if pooling == "gem" else AveragePool()
        self.temporal = TemporalAttention(channels) if video and temporal == "attention" and not volume_trunk \
            else None
        self.neck = BNNeck(channels, num_classes)
        self.feature_dim = channels

    @property
    def nonlocal_paths(self) -> Tuple[str, ...]:
        return tuple(f"trunk.{p}" for p in self.trunk.nonlocal_paths)

    def forward(self, x: torch.Tensor):
        if not self.video:
            return self.neck(self.pool(self.trunk(x)))
        batch, frames = x.shape[:2]
        if self.volume_trunk:  # resnet3d: (B, 3, T, H, W) through its stem and stages, pooled over T x H x W
            t = self.trunk
            y = t.maxpool(t.relu(t.bn1(t.conv1(x.transpose(1, 2)))))
            return self.neck(self.pool(t.layer4(t.layer3(t.layer2(t.layer1(y))))))
        self.trunk.frames = frames
        per_frame = self.pool(self.trunk(x.flatten(0, 1))).view(batch, frames, -1)
        clip = self.temporal(per_frame) if self.temporal is not None else per_frame.mean(1)
        return self.neck(clip)


@torch.no_grad()
def tracklet_feature(model: nn.Module, clips: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """Evaluation feature of one tracklet from its clips (num_clips, T, 3, H, W) (ReidVideoDataset's test items):
    the model's (eval-mode) features of the clips, `chunk` clips at a time, averaged (Gao & Nevatia's dense test)."""
    features = [model(clips[start:start + chunk]) for start in range(0, len(clips), chunk)]
    return torch.cat(features).mean(0)


def _check(name, value, valid):
    if value not in valid:
        raise ConfigError(f"unknown {name} {value!r}; valid: {', '.join(map(str, valid))}")


def build_reid_model(backbone: str, depth: int, num_classes: int, block_args: dict,
                     output_relu: Optional[bool] = None, pretrained=None, last_stride: int = 1,
                     pooling: str = "avg", temporal: str = "avg", trunk: str = "resnet", device=None,
                     dtype=None, **unknown) -> Tuple[nn.Module, dict]:
    """The re-ID model and its build_args beyond the common ones; called by models.build_model (backbone 'reid' or
    'reid_video'), which has checked nl_type, stage_num, div, is_sys, is_norm, order (block_args).

    depth 18, 34, 50, 101. nl_nums (in block_args): 0, 1 or 5 (reid_positions). last_stride 1 | 2; pooling avg |
    gem. Video: temporal avg | attention; trunk 'resnet' (2-D frames, dim-3 blocks over the clip) or 'resnet3d' (the
    video task's 3-D ResNet, its block placement and weights: pretrained a 3D-ResNets / torchvision file).
    pretrained (resnet trunk): True = torchvision's ImageNet weights, a str = a state_dict file.
    """
    if unknown:
        raise ConfigError(f"unknown re-ID model option(s) {', '.join(unknown)}; valid: last_stride, pooling, "
                          "temporal, trunk")
    video = backbone == "reid_video"
    _check("arch", depth, REID_ARCHS)
    _check("nl_nums", block_args["nl_nums"], NL_NUMS)
    _check("last_stride", last_stride, (1, 2))
    _check("pooling", pooling, POOLINGS)
    _check("temporal pooling", temporal, TEMPORAL)
    _check("video trunk", trunk, VIDEO_TRUNKS)
    if not video and (trunk != "resnet" or temporal != "avg"):
        raise ConfigError("trunk and temporal apply to backbone 'reid_video' only")
    nl_type = block_args["nl_type"]
    output_relu = resolve_output_relu(nl_type, output_relu, zero_init=True)
    extra = dict(output_relu=output_relu, last_stride=last_stride, pooling=pooling, temporal=temporal, trunk=trunk)

    def make():
        if trunk == "resnet3d":
            net, _ = build_video_model("resnet3d", depth, 1, nl_type, block_args["nl_nums"], 1, block_args,
                                       output_relu, None, pretrained)
            net.fc = nn.Identity()
            if last_stride == 1:
                _unstride(net.layer4[0])
            channels = net.layer4[-1].bn3.num_features if depth >= 50 else net.layer4[-1].bn2.num_features
            return ReidNet(net, channels, num_classes, pooling, True, temporal, volume_trunk=True)

        def make_nonlocal(channels):
            return build_nonlocal(nl_type, channels, nonlocal_width(channels, block_args["div"]),
                                  stage_num=block_args["stage_num"], is_sys=block_args["is_sys"],
                                  is_norm=block_args["is_norm"], order=block_args["order"],
                                  output_relu=output_relu, zero_init=not output_relu, dim=3 if video else 2)
        positions = reid_positions(block_args["nl_nums"], REID_ARCHS[depth]) if nl_type else {}
        net = ResNetTrunk(depth, positions, make_nonlocal, last_stride)
        init_nonlocal_blocks(net, identity=not output_relu)
        if pretrained:
            load_imagenet_trunk(net, pretrained)
        return ReidNet(net, net.out_channels, num_classes, pooling, video, temporal)

    return build_on(device, dtype, make), extra
