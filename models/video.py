"""Video backbones (input (B, 3, T, H, W) -> logits (B, num_classes)) with space-time nonlocal blocks (dim=3);
docs/classification.md "Models" and docs/blocks.md ("output_relu").

- `resnet3d` 18 / 34 / 50 / 101: the 3-D ResNet of Hara et al.'s 3D-ResNets framework ("Can Spatiotemporal 3D
  CNNs Retrace the History of 2D CNNs and ImageNet?", CVPR 2018): conv1 7x7x7 stride (1, 2, 2), BN, ReLU, 3x3x3
  max-pool stride 2, BasicBlock (18, 34) or Bottleneck (50, 101) stages of 64-128-256-512 planes with strides
  1, 2, 2, 2, shortcut 'B' (1x1x1 conv + BN when the shape changes) or 'A' (strided subsampling + zero channels,
  no parameters), global average pooling, fc. Its module names (conv1, bn1, layer1.0.conv1, ..., fc) are that
  framework's, so its checkpoints (e.g. the Kinetics-pretrained resnet-50-kinetics.pth) load.
- `r3d`, `mc3`, `r2plus1d` (arch 18): torchvision's VideoResNets (Tran et al., "A Closer Look at Spatiotemporal
  Convolutions for Action Recognition", CVPR 2018), built by torchvision with its module names, so its
  Kinetics-400 weights load.

Blocks are inserted into the layer Sequentials like the image ResNets' (models/common.py), so later residual
blocks shift by one index per block; `load_video_weights` maps plain-backbone checkpoints onto that. The blocks
have dim 3 (N = T H W positions) and start as the identity (their norm layers at 0), without the output ReLU by
default: with it, such a block would get no gradient at all (docs/blocks.md, "output_relu").
"""
import os
from typing import Dict, Iterable, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from lib import build_nonlocal
from lib.errors import ConfigError
from models.common import assemble_stage, nonlocal_width, resolve_output_relu
from models.resnet import Bottleneck, nonlocal_positions
from models.weights import _read_state_dict, load_shifted_state_dict

STAGE_PLANES = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)
SHORTCUT_TYPES = ("A", "B")
# torchvision builder and Kinetics-400 weights of each torchvision backbone (arch 18 only).
TORCHVISION_VIDEO = {"r3d": ("r3d_18", "R3D_18_Weights"), "mc3": ("mc3_18", "MC3_18_Weights"),
                     "r2plus1d": ("r2plus1d_18", "R2Plus1D_18_Weights")}
VIDEO_ARCHS = {"resnet3d": (18, 34, 50, 101), "r3d": (18,), "mc3": (18,), "r2plus1d": (18,)}
VIDEO_BACKBONES = tuple(VIDEO_ARCHS)
# nl_layer 2: one block after layer2's first residual block; 1 (the default) and 3: the positions of nl_nums.
VIDEO_NL_LAYERS = (1, 2, 3)


def conv3x3x3(inplanes: int, planes: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock3d(nn.Module):
    """conv3x3x3(stride)-BN-ReLU-conv3x3x3-BN, plus the shortcut, then ReLU."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = conv3x3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3x3(planes, planes)
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class Bottleneck3d(Bottleneck):
    """conv1x1x1-BN-ReLU-conv3x3x3(stride)-BN-ReLU-conv1x1x1(x4)-BN, plus the shortcut, then ReLU: the 2-D
    Bottleneck's forward and module names over 3-D layers."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        nn.Module.__init__(self)  # the 2-D layers of Bottleneck.__init__ are not wanted; its forward is
        self.conv1 = nn.Conv3d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = conv3x3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample


class ZeroPadShortcut(nn.Module):
    """Shortcut 'A': subsample positions by `stride` and append zero channels up to `planes` (no parameters)."""

    def __init__(self, planes: int, stride: int):
        super().__init__()
        self.planes, self.stride = planes, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.avg_pool3d(x, kernel_size=1, stride=self.stride)  # a kernel of 1: plain subsampling
        return F.pad(out, (0, 0, 0, 0, 0, 0, 0, self.planes - out.shape[1]))

    def extra_repr(self) -> str:
        return f"planes={self.planes}, stride={self.stride}"


def video_positions(nl_nums: int, nl_layer: int, depths: Tuple[int, ...]) -> Dict[str, Tuple[int, ...]]:
    """Per stage, the 0-based residual-block indices after which a block goes (docs/classification.md, "Models"):
    nl_layer 2: after
    layer2's first block; else as the image ResNets (nl_nums 1: layer3 before its last block; nl_nums 5: three in
    layer3, two in layer4)."""
    if nl_nums == 0:
        return {}
    if nl_layer == 2:
        return {"layer2": (0,)}
    return nonlocal_positions(nl_nums, depths)


class ResNet3d(nn.Module):
    """The 3D-ResNets framework's 3-D ResNet (module docstring) with nonlocal blocks at `positions`.

    Init as that framework: kaiming normal (fan_out) for every conv, BN weight 1 / bias 0 (the blocks' identity
    start is then set by `init_nonlocal_blocks`).
    """

    ARCHS = {18: (BasicBlock3d, (2, 2, 2, 2)), 34: (BasicBlock3d, (3, 4, 6, 3)),
             50: (Bottleneck3d, (3, 4, 6, 3)), 101: (Bottleneck3d, (3, 4, 23, 3))}

    def __init__(self, depth: int, num_classes: int, positions: Dict[str, Tuple[int, ...]], make_nonlocal,
                 shortcut_type: str = "B"):
        super().__init__()
        self.depth = depth
        block, depths = self.ARCHS[depth]
        self.nonlocal_paths = []
        self.conv1 = nn.Conv3d(3, 64, kernel_size=7, stride=(1, 2, 2), padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        inplanes = 64
        for stage, (planes, stride, count) in enumerate(zip(STAGE_PLANES, STAGE_STRIDES, depths), start=1):
            outplanes = planes * block.expansion
            downsample = None
            if stride != 1 or inplanes != outplanes:
                downsample = (ZeroPadShortcut(outplanes, stride) if shortcut_type == "A" else nn.Sequential(
                    nn.Conv3d(inplanes, outplanes, kernel_size=1, stride=stride, bias=False),
                    nn.BatchNorm3d(outplanes)))
            blocks = [block(inplanes, planes, stride, downsample)]
            blocks += [block(outplanes, planes) for _ in range(1, count)]
            name = f"layer{stage}"
            setattr(self, name, assemble_stage(blocks, positions.get(name, ()), lambda c=outplanes: make_nonlocal(c),
                                               name, self.nonlocal_paths))
            inplanes = outplanes
        self.nonlocal_paths = tuple(self.nonlocal_paths)
        # The framework pools with a fixed AvgPool3d sized for its input (the whole map at 16 x 112 x 112).
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm3d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, T, H, W) -> (B, num_classes)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def init_nonlocal_blocks(model: nn.Module, identity: bool = True) -> None:
    """The blocks' convs kaiming normal (fan_out; biases 0); with `identity` their norm layers get weight 0 and
    bias 0, so each block starts as the identity and a pretrained backbone keeps its outputs (else weight 1)."""
    for path in model.nonlocal_paths:
        for module in model.get_submodule(path).modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
                (nn.init.zeros_ if identity else nn.init.ones_)(module.weight)
                nn.init.zeros_(module.bias)


def torchvision_video_resnet(backbone: str, num_classes: int, positions: Dict[str, Tuple[int, ...]],
                             make_nonlocal) -> nn.Module:
    """torchvision's r3d_18 / mc3_18 / r2plus1d_18 (its own init) with nonlocal blocks in its layer Sequentials."""
    model = getattr(torchvision.models.video, TORCHVISION_VIDEO[backbone][0])(weights=None, num_classes=num_classes)
    model.depth = 18
    paths: List[str] = []
    for stage, planes in enumerate(STAGE_PLANES, start=1):
        name = f"layer{stage}"
        setattr(model, name, assemble_stage(list(getattr(model, name)), positions.get(name, ()),
                                            lambda c=planes: make_nonlocal(c), name, paths))
    model.nonlocal_paths = tuple(paths)
    return model


def _parse_nl_layer(nl_layer: Union[int, str, Iterable]) -> int:
    items = [nl_layer] if isinstance(nl_layer, (int, str)) else list(nl_layer)
    try:
        layers = {int(str(item).strip()) for item in items}
    except ValueError:
        layers = set()
    if len(layers) != 1 or not layers <= set(VIDEO_NL_LAYERS):
        raise ConfigError(f"nl_layer {nl_layer!r} is not supported for video backbones: 2 (one block after layer2's "
                          "first residual block) or 1 / 3 (the default: layer3 / layer4 positions from nl_nums)")
    return 2 if layers == {2} else 1  # one spelling of the default for build_args


def build_video_model(backbone: str, depth: int, num_classes: int, nl_type: Optional[str], nl_nums: int,
                      nl_layer, block_kwargs: dict, output_relu: Optional[bool] = None,
                      shortcut_type: Optional[str] = None,
                      pretrained: Union[None, bool, str, os.PathLike] = None) -> Tuple[nn.Module, dict]:
    """The video model and its build_args entries beyond the common ones; called by models.build_model, which has
    checked the arguments every backbone shares. block_kwargs: stage_num, div, is_sys, is_norm, order."""
    layer = _parse_nl_layer(nl_layer)
    valid_nums = (0, 1, 5) if backbone == "resnet3d" and depth in (50, 101) else (0, 1)
    if nl_nums not in valid_nums:
        raise ConfigError(f"nl_nums {nl_nums!r} is not supported for {backbone}-{depth}; valid: "
                          f"{', '.join(map(str, valid_nums))} (5 needs resnet3d 50 or 101)")
    if layer == 2 and nl_nums not in (0, 1):
        raise ConfigError("nl_layer 2 places one block (after layer2's first residual block): use nl_nums 1")
    if backbone == "resnet3d":
        shortcut_type = "B" if shortcut_type is None else shortcut_type
        if shortcut_type not in SHORTCUT_TYPES:
            raise ConfigError(f"shortcut_type must be 'A' (zero-padding) or 'B' (1x1x1 conv + BN), "
                              f"got {shortcut_type!r}")
    elif shortcut_type is not None:
        raise ConfigError(f"shortcut_type applies to resnet3d only, not to {backbone} (got {shortcut_type!r})")
    # None = False, as the earlier release's space-time units: a zero-initialized block with the output ReLU
    # would never learn (relu(0) has gradient 0 for all its parameters).
    output_relu = resolve_output_relu(nl_type, output_relu, zero_init=True)
    positions = video_positions(nl_nums, layer, ResNet3d.ARCHS[depth][1] if backbone == "resnet3d"
                                else (2, 2, 2, 2))
    div = block_kwargs["div"]

    def make_nonlocal(channels):
        return build_nonlocal(nl_type, channels, nonlocal_width(channels, div), stage_num=block_kwargs["stage_num"],
                              is_sys=block_kwargs["is_sys"], is_norm=block_kwargs["is_norm"],
                              order=block_kwargs["order"], output_relu=output_relu, zero_init=not output_relu,
                              dim=3)

    if backbone == "resnet3d":
        model = ResNet3d(depth, num_classes, positions, make_nonlocal, shortcut_type)
    else:
        model = torchvision_video_resnet(backbone, num_classes, positions, make_nonlocal)
    init_nonlocal_blocks(model, identity=not output_relu)  # an explicit output ReLU: weight 1, so the block learns
    if pretrained:
        load_video_weights(model, backbone, pretrained)
    return model, dict(nl_layer=[layer], output_relu=output_relu, shortcut_type=shortcut_type)


def load_video_weights(model: nn.Module, backbone: str, pretrained: Union[bool, str, os.PathLike]) -> None:
    """True: torchvision's Kinetics-400 weights (r3d / mc3 / r2plus1d; downloaded once into torch's cache). A path:
    a state_dict of the plain backbone, torchvision's format or a 3D-ResNets checkpoint (a dict with 'arch' and
    'state_dict', keys prefixed 'module.'). Residual-block indices shift past the inserted blocks and fc is
    skipped, with a notice, when the class count differs (models.weights.load_shifted_state_dict)."""
    if isinstance(pretrained, (str, os.PathLike)):
        what = ("a 3D-ResNets resnet-{0} checkpoint or a resnet3d-{0} state_dict" if backbone == "resnet3d"
                else "a torchvision {1} state_dict").format(model.depth, TORCHVISION_VIDEO.get(backbone, ("",))[0])
        load_shifted_state_dict(model, _read_state_dict(pretrained), what)
        return
    if backbone not in TORCHVISION_VIDEO:
        raise ConfigError(f"{backbone} has no downloadable weights: pass the path of a 3D-ResNets checkpoint "
                          f"(e.g. resnet-{model.depth}-kinetics.pth) as pretrained")
    builder, weights_name = TORCHVISION_VIDEO[backbone]
    weights = getattr(torchvision.models.video, weights_name).KINETICS400_V1
    try:
        source = weights.get_state_dict(progress=True, check_hash=True)
    except OSError as error:  # URLError, socket and SSL errors are all OSErrors
        raise ConfigError(f"could not download torchvision's {builder} Kinetics-400 weights ({weights.url}): "
                          f"{error}; download that file elsewhere and pass its local path as pretrained") from None
    load_shifted_state_dict(model, source, f"a torchvision {builder} state_dict")


def fine_tuning_parameters(model: nn.Module, ft_begin_index: int) -> List[dict]:
    """Parameter groups for the optimizer for the 3D-ResNets framework's fine-tuning (its --ft_begin_index).

    0: every parameter trains. k in 1..5: layer{k}..layer4, fc and every nonlocal block train (k = 5: only fc and
    the blocks); the rest (stem, earlier layers) is frozen. Frozen parameters get requires_grad False (no
    gradient is computed for them) and are left out of the returned group, where that framework kept them with
    lr 0; the result is the same (weight decay and momentum never move them) at less cost. BatchNorm running
    statistics of frozen layers still update in train mode, as there. Returns [{"params": [...]}]. Call it before
    wrapping the model in DistributedDataParallel, which registers the parameters that require a gradient when
    it is built.
    """
    if isinstance(ft_begin_index, bool) or not isinstance(ft_begin_index, int) or not 0 <= ft_begin_index <= 5:
        raise ConfigError(f"ft_begin_index must be 0 (train everything) or 1..5 (train layer<k>..layer4, fc and "
                          f"the nonlocal blocks), got {ft_begin_index!r}")
    model = getattr(model, "module", model)  # DDP / DataParallel: the wrapped model's names
    trained = {f"layer{k}" for k in range(ft_begin_index, 5)} | {"fc"}
    blocks = tuple(path + "." for path in getattr(model, "nonlocal_paths", ()))
    params = []
    for name, param in model.named_parameters():
        train = ft_begin_index == 0 or name.split(".")[0] in trained or name.startswith(blocks)
        param.requires_grad_(train)
        if train:
            params.append(param)
    return [{"params": params}]
