"""Backbones with nonlocal blocks: a name -> class registry and one factory, build_model (docs/classification.md,
"Models").

    model = build_model("preresnet", 20, num_classes=10, nl_type="snl", is_sys=True, is_norm=True)
    model = build_model("resnet", "50", num_classes=1000, nl_type="snl", nl_nums=5, pretrained=True)
    model = build_model("preresnet", 20, num_classes=10, nl_type="cheb", order=3)
    model = build_model("resnet3d", "50", num_classes=101, nl_type="snl")      # video: (B, 3, T, H, W)

model.build_args holds the canonical arguments, so build_model(**model.build_args) rebuilds the same network
(a checkpoint can store them); weights are then restored with load_state_dict_checked.
"""
from typing import Iterable, Optional, Tuple, Union

from torch import nn

from lib import NONLOCAL_BLOCKS
from lib.errors import ConfigError
from lib.registry import DEFAULT_ORDER, ORDER_BLOCKS
from models.common import build_on, resolve_output_relu, with_output_relu
from models.detection import DETECTORS, build_detector
from models.preresnet import PreResNet
from models.reid import REID_ARCHS, REID_BACKBONES, build_reid_model
from models.resnet import ResNet
from models.video import VIDEO_ARCHS, VIDEO_BACKBONES, build_video_model
from models.weights import classifier_size, load_state_dict_checked, load_torchvision_resnet

BACKBONES = {"preresnet": PreResNet, "resnet": ResNet}
PRERESNET_STAGES = (1, 2, 3)

__all__ = ["BACKBONES", "build_model", "classifier_size", "load_state_dict_checked", "PreResNet", "ResNet",
           "with_output_relu"]


def _valid(names: Iterable) -> str:
    return ", ".join(str(name) for name in names)


def _parse_arch(backbone: str, arch: Union[int, str]) -> int:
    archs = VIDEO_ARCHS.get(backbone) or (REID_ARCHS if backbone in REID_BACKBONES else BACKBONES[backbone].ARCHS)
    try:
        depth = int(str(arch).strip())
    except ValueError:
        depth = None
    if depth not in archs:
        raise ConfigError(f"unknown arch {arch!r} for backbone {backbone!r}; valid: {_valid(archs)}")
    return depth


def _parse_nl_layer(nl_layer: Union[int, str, Iterable[Union[int, str]]]) -> Tuple[int, ...]:
    """PreResNet stages that get a block, as sorted ints; accepts '1', 1, ('1', '3'), [2, 3]."""
    items = [nl_layer] if isinstance(nl_layer, (int, str)) else list(nl_layer)
    stages = set()
    for item in items:
        try:
            stage = int(str(item).strip())
        except ValueError:
            stage = None
        if stage not in PRERESNET_STAGES:
            raise ConfigError(f"unknown nl_layer stage {item!r}; valid: {_valid(PRERESNET_STAGES)}")
        stages.add(stage)
    return tuple(sorted(stages))


def build_model(backbone: str, arch: Union[int, str], num_classes: int, nl_type: Optional[str] = None,
                nl_nums: int = 1, nl_layer: Union[int, str, Iterable] = ("1",), stage_num: int = 1,
                div: float = 2, is_sys: Optional[bool] = None, is_norm: Optional[bool] = None,
                pretrained: Union[None, bool, str] = None, order: Optional[int] = None,
                output_relu: Optional[bool] = None, shortcut_type: Optional[str] = None, device=None,
                dtype=None, **task_options) -> nn.Module:
    """Build backbone-arch with nl_type nonlocal blocks at the reference positions (docs/classification.md, "Models").

    backbone: "preresnet" (CIFAR; arch 20, 56, 110) or "resnet" (ImageNet; arch 50, 101, 152).
    nl_type None or nl_nums 0: the plain backbone. nl_nums: preresnet 0 or 1 (one block in each nl_layer
    stage); resnet 0, 1 or 5. nl_layer (preresnet only): stages 1, 2, 3. stage_num, div, is_sys, is_norm:
    see lib.build_nonlocal (None = the block's default). order: of cheb / arma (None = 2; docs/spectral.md),
    an error for other blocks; build_args holds the resolved value. pretrained (resnet only): None / False = none,
    True = torchvision's ImageNet weights (download), a str = a torchvision-format state_dict file.

    Video (models/video.py): backbone "resnet3d" (arch 18, 34, 50, 101), "r3d", "mc3" or "r2plus1d" (arch 18),
    input (B, 3, T, H, W), blocks with dim=3. nl_nums 0, 1 (layer3, before its last residual block) or 5
    (resnet3d 50 / 101: as resnet); nl_layer 2 puts the one block after layer2's first residual block instead.
    output_relu (stage-based blocks): Y = X + relu(BN(.)) (True) or X + BN(.) (False). None = False where the
    blocks start as the identity (resnet, video): with the ReLU such a block gets no gradient and never learns
    (docs/blocks.md, "output_relu"); an explicit True gives their BN weight 1, so they learn but do not start as
    the identity. preresnet: None = the block's default (True; gsnl False). shortcut_type (resnet3d):
    'B' (default) or 'A'. pretrained: True = torchvision's Kinetics-400 weights (r3d / mc3 / r2plus1d), a str = a
    torchvision-format state_dict or a 3D-ResNets checkpoint.
    Re-ID (models/reid.py): backbone "reid" / "reid_video" (arch 18, 34, 50, 101; nl_nums 0, 1, 5) with
    task_options last_stride, pooling, temporal, trunk.
    device, dtype: where and in which dtype the parameters are created (e.g. 'meta': no memory, then
    `to_empty`; build_args leave them out).
    Detection: backbone "maskrcnn" / "fasterrcnn" (arch 18, 34, 50, 101), task_options as in
    models.detection.build_detector (pretrained_backbone, trainable_backbone_layers, min_size, ...).
    Raises ConfigError for any unknown name or unsupported combination (the blocks check their own arguments:
    stage_num, is_sys, is_norm, output_relu).
    """
    if backbone in DETECTORS:
        return build_on(device, dtype, build_detector, backbone, arch, num_classes, nl_type=nl_type, nl_nums=nl_nums,
                        stage_num=stage_num, div=div, is_sys=is_sys, is_norm=is_norm, order=order,
                        output_relu=output_relu, pretrained=pretrained, **task_options)
    known = list(BACKBONES) + list(VIDEO_BACKBONES) + list(REID_BACKBONES)
    if backbone not in known:
        raise ConfigError(f"unknown backbone {backbone!r}; valid: {_valid([*known, *DETECTORS])}")
    if task_options and backbone not in REID_BACKBONES:
        raise ConfigError(f"{', '.join(task_options)} apply to the re-ID backbones ({_valid(REID_BACKBONES)}) and "
                          f"the detection models ({_valid(DETECTORS)}) only, not {backbone}")
    video = backbone in VIDEO_BACKBONES or backbone in REID_BACKBONES  # re-ID: models/reid.py checks nl_nums
    depth = _parse_arch(backbone, arch)
    if nl_type is not None and nl_type not in NONLOCAL_BLOCKS:
        raise ConfigError(f"unknown nl_type {nl_type!r}; valid: {_valid(NONLOCAL_BLOCKS)} (or None for none)")
    if not video and nl_nums not in BACKBONES[backbone].NL_NUMS:  # video: checked in models/video.py
        valid = _valid(BACKBONES[backbone].NL_NUMS)
        raise ConfigError(f"nl_nums {nl_nums!r} is not supported for {backbone}; valid: {valid}")
    if not div > 0:
        raise ConfigError(f"div must be positive, got {div!r}")
    if num_classes < 1:
        raise ConfigError(f"num_classes must be positive, got {num_classes!r}")
    if not video and shortcut_type is not None:
        raise ConfigError(f"shortcut_type applies to the video backbones only, not to {backbone}")
    stages = None if video else _parse_nl_layer(nl_layer)  # video: models/video.py parses its own
    if nl_type is None or nl_nums == 0:
        nl_type, nl_nums, order = None, 0, None  # one canonical spelling of "no blocks", for build_args
    if nl_type in ORDER_BLOCKS:
        order = DEFAULT_ORDER if order is None else order
        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise ConfigError(f"order must be a positive integer, got {order!r}")
    elif order is not None:
        raise ConfigError(f"order applies to {' and '.join(ORDER_BLOCKS)} only, not to {nl_type!r}")
    block_args = dict(nl_type=nl_type, nl_nums=nl_nums, stage_num=stage_num, div=div, is_sys=is_sys,
                      is_norm=is_norm, order=order)
    if backbone in REID_BACKBONES:  # models/reid.py (re-ID: last_stride, pooling, temporal, trunk)
        model, reid_args = build_reid_model(backbone, depth, num_classes, block_args, output_relu, pretrained,
                                            device=device, dtype=dtype, **task_options)
        model.build_args = dict(backbone=backbone, arch=depth, num_classes=num_classes, **block_args, **reid_args)
        return model
    if video:
        model, video_args = build_on(device, None, build_video_model, backbone, depth, num_classes, nl_type, nl_nums,
                                     nl_layer, block_args, output_relu, shortcut_type, pretrained)
        model = model if dtype is None else model.to(dtype)
        model.build_args = dict(backbone=backbone, arch=depth, num_classes=num_classes, **block_args, **video_args)
        return model
    # ResNet's blocks start as the identity (zero BN), PreResNet's do not (docs/blocks.md, "output_relu").
    output_relu = resolve_output_relu(nl_type, output_relu, zero_init=backbone == "resnet")
    if backbone == "preresnet":
        if pretrained:
            raise ConfigError("there are no pretrained weights for preresnet; to start from a checkpoint, load "
                              "it with load_state_dict_checked")
        model = build_on(device, dtype, PreResNet, depth, num_classes, nl_layer=stages, output_relu=output_relu,
                         **block_args)
    else:
        if stages != (1,):
            # Silently ignoring it would leave the user believing the blocks went elsewhere.
            raise ConfigError("nl_layer applies to preresnet only; resnet's block positions come from nl_nums")
        model = build_on(device, dtype, ResNet, depth, num_classes, output_relu=output_relu, **block_args)
        if pretrained:
            load_torchvision_resnet(model, pretrained)
    # pretrained is left out: a checkpoint's own weights replace it when the model is rebuilt from build_args.
    model.build_args = dict(backbone=backbone, arch=depth, num_classes=num_classes, nl_layer=list(stages),
                            output_relu=output_relu, **block_args)
    return model
