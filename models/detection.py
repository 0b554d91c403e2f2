"""Mask R-CNN / Faster R-CNN with a ResNet-FPN backbone that holds nonlocal blocks (docs/detection.md).

    model = build_detector("maskrcnn", 50, num_classes=91, nl_type="snl", nl_nums=1, pretrained="coco.pth")
    losses = model(images, targets)        # training: dict of the heads' losses
    detections = model(images)             # eval: per image {"boxes", "labels", "scores"[, "masks"]}

Heads, FPN and the image transform are torchvision's (He et al., "Mask R-CNN", ICCV 2017; Lin et al., "Feature
Pyramid Networks for Object Detection", CVPR 2017). The backbone is torchvision's ResNet with frozen BN
(FrozenBatchNorm2d) whenever it starts from trained weights, as torchvision's builders, and its residual stages
as nn.Sequential; the nonlocal blocks go *into* those Sequentials
(models.common.assemble_stage), so the later residual blocks' keys shift by one per block, as in the CGNL
release's detection backbone (Yue et al., "Compact Generalized Non-local Network", NeurIPS 2018), whose loader
renames layer3's indices past its block. Placement (models.resnet.nonlocal_positions): nl_nums 1 = one block in
layer3 before its last residual block (CGNL's place); nl_nums 5 = the ImageNet ResNet placement.

The blocks' own norm (BN for the stage-based blocks, GroupNorm for cgnl) is *not* frozen: it is zero-initialized
so that each block starts as the identity, and a frozen zero scale would keep the block at the identity forever.
Those parameters stay trainable even when their stage is excluded by trainable_backbone_layers (a frozen block
is dead weight). Its BN normalizes with the batch's statistics in training (over B x H x W positions, enough even
at 2 images per GPU) and with its running statistics in eval, like any BN layer.
"""
import os
from typing import Dict, Optional, Union

import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.ops.misc import FrozenBatchNorm2d

from lib import NONLOCAL_BLOCKS, build_nonlocal
from lib.errors import ConfigError
from models.common import assemble_stage, nonlocal_width, resolve_output_relu
from models.resnet import nonlocal_positions
from models.weights import _mismatch, _read_state_dict, load_shifted_state_dict, strip_module_prefix

DETECTORS = {"maskrcnn": MaskRCNN, "fasterrcnn": FasterRCNN}
RESNETS = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34, 50: torchvision.models.resnet50,
           101: torchvision.models.resnet101}
DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
NL_NUMS = (0, 1, 5)
COCO_CLASSES = 91  # torchvision's heads: background + COCO's category ids 1..90 (with gaps)
# torchvision publishes COCO detectors for ResNet-50 only.
COCO_WEIGHTS = {"maskrcnn": torchvision.models.detection.MaskRCNN_ResNet50_FPN_Weights.COCO_V1,
                "fasterrcnn": torchvision.models.detection.FasterRCNN_ResNet50_FPN_Weights.COCO_V1}
IMAGENET_WEIGHTS = {18: torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
                    34: torchvision.models.ResNet34_Weights.IMAGENET1K_V1,
                    50: torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
                    101: torchvision.models.ResNet101_Weights.IMAGENET1K_V1}
# The class-count-dependent layers, re-made (kept at their fresh init) when num_classes is not COCO's 91.
PREDICTOR_PREFIXES = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")
BODY_PREFIX = "backbone.body."


def nonlocal_backbone(depth: int, nl_type: Optional[str], nl_nums: int, trainable_layers: int, block_args: dict,
                      output_relu: Optional[bool], pretrained_backbone: bool = False,
                      frozen_bn: bool = True) -> nn.Module:
    """torchvision's ResNet-FPN extractor (frozen BN or BatchNorm2d) with nonlocal blocks inside layer3 / layer4.

    backbone.body.nonlocal_paths lists the blocks ("layer3.5", ...) relative to the body, as load_shifted_state_dict
    expects. pretrained_backbone: torchvision's ImageNet weights (downloaded) before the blocks go in.
    """
    weights = _fetch(IMAGENET_WEIGHTS[depth], f"ResNet-{depth} ImageNet") if pretrained_backbone else None
    resnet = RESNETS[depth](weights=None, norm_layer=FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d)
    if weights is not None:
        resnet.load_state_dict(weights)
    positions = nonlocal_positions(nl_nums, DEPTHS[depth]) if nl_type is not None else {}
    paths = []
    for name, after in positions.items():
        stage = getattr(resnet, name)
        channels = stage[-1].conv1.in_channels  # the stage's output width (BasicBlock or Bottleneck)

        def make_nonlocal(channels=channels):
            return build_nonlocal(nl_type, channels, nonlocal_width(channels, block_args["div"]),
                                  stage_num=block_args["stage_num"], is_sys=block_args["is_sys"],
                                  is_norm=block_args["is_norm"], order=block_args["order"],
                                  output_relu=output_relu, zero_init=not output_relu)

        setattr(resnet, name, assemble_stage(list(stage), after, make_nonlocal, name, paths))
    backbone = _resnet_fpn_extractor(resnet, trainable_layers)
    backbone.body.nonlocal_paths = tuple(paths)
    for path in paths:  # see the module docstring: a block in a frozen stage must still be able to learn
        backbone.body.get_submodule(path).requires_grad_(True)
    return backbone


def _fetch(weights, what: str) -> Dict[str, torch.Tensor]:
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except OSError as error:  # no network, DNS, SSL: all OSErrors
        cache = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
        raise ConfigError(f"could not download torchvision's {what} weights: fetch {weights.url} into {cache} "
                          f"(or pass the file's path as pretrained) ({error})") from None


def load_torchvision_detector(model: nn.Module, source: Dict[str, torch.Tensor], what: str) -> None:
    """Load a torchvision-format detector state_dict (no nonlocal blocks) into model.

    The body's residual blocks are renamed past the inserted blocks (models.weights.load_shifted_state_dict);
    the blocks keep their identity init. When model's class count differs from the file's, the box predictor and
    the mask logits keep their fresh init (with a notice). Any other mismatch raises ConfigError.
    """
    # BN's step counter: torchvision's FrozenBatchNorm2d drops it too, and BN-built files carry it.
    source = {k: v for k, v in strip_module_prefix(source).items() if not k.endswith("num_batches_tracked")}
    body = {k[len(BODY_PREFIX):]: v for k, v in source.items() if k.startswith(BODY_PREFIX)}
    rest = {k: v for k, v in source.items() if not k.startswith(BODY_PREFIX)}
    if not body:
        raise ConfigError(f"pretrained weights are not {what}: no {BODY_PREFIX}* keys")
    load_shifted_state_dict(model.backbone.body, body, what)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(BODY_PREFIX)}
    remade = [k for k in own if k.startswith(PREDICTOR_PREFIXES) and k in rest and rest[k].shape != own[k].shape]
    if remade:
        print(f"=> pretrained predictors have {rest['roi_heads.box_predictor.cls_score.weight'].shape[0]} classes, "
              f"the model {own['roi_heads.box_predictor.cls_score.weight'].shape[0]}: keeping fresh predictors")
        rest = {k: v for k, v in rest.items() if not k.startswith(PREDICTOR_PREFIXES)}
    keep_own = {k for k in own if k.startswith(PREDICTOR_PREFIXES)} if remade else set()
    problems = _mismatch(own, rest, ignore_missing=keep_own)
    if problems:
        raise ConfigError(f"pretrained weights are not {what}: {'; '.join(problems)}")
    model.load_state_dict(rest, strict=False)


def build_detector(model: str, arch: Union[int, str], num_classes: int = COCO_CLASSES, nl_type: Optional[str] = None,
                   nl_nums: int = 1, stage_num: int = 1, div: float = 2, is_sys: Optional[bool] = None,
                   is_norm: Optional[bool] = None, order: Optional[int] = None,
                   output_relu: Optional[bool] = None, pretrained: Union[None, bool, str] = None,
                   pretrained_backbone: bool = False, trainable_backbone_layers: Optional[int] = None,
                   frozen_bn: Optional[bool] = None, **detector_kwargs) -> nn.Module:
    """model "maskrcnn" / "fasterrcnn" on ResNet-arch (18, 34, 50, 101; int or str) + FPN with nl_nums nl_type blocks.

    num_classes counts the background (COCO: 91, torchvision's). pretrained: True = torchvision's COCO detector
    (ResNet-50 only; downloaded), a str = a torchvision-format detector state_dict file. pretrained_backbone:
    torchvision's ImageNet ResNet (ignored with pretrained, which holds a backbone too). trainable_backbone_layers:
    as torchvision, 0..5 stages from layer4 down (None: 3 with pretrained weights, else 5). frozen_bn: the
    ResNet's norm is FrozenBatchNorm2d (True) or BatchNorm2d (False); None = torchvision's rule, frozen exactly
    when pretrained or pretrained_backbone brings statistics to keep (from scratch they are 0 / 1, and frozen
    they would normalize nothing). detector_kwargs go
    to torchvision's MaskRCNN / FasterRCNN (min_size, max_size, box_score_thresh, ...).
    build_args holds the canonical arguments (without pretrained), for rebuilding from a checkpoint.
    """
    if model not in DETECTORS:
        raise ConfigError(f"unknown detector {model!r}; valid: {', '.join(DETECTORS)}")
    depth = int(arch) if str(arch).strip().isdigit() else arch
    if depth not in RESNETS:
        raise ConfigError(f"unknown arch {arch!r} for {model}; valid: {', '.join(map(str, RESNETS))}")
    if nl_type is not None and nl_type not in NONLOCAL_BLOCKS:
        raise ConfigError(f"unknown nl_type {nl_type!r}; valid: {', '.join(NONLOCAL_BLOCKS)} (or None)")
    if nl_nums not in NL_NUMS:
        raise ConfigError(f"nl_nums {nl_nums!r} is not supported for {model}; valid: {', '.join(map(str, NL_NUMS))}")
    if pretrained is True and depth != 50:
        raise ConfigError(f"torchvision has COCO {model} weights for ResNet-50 only, not ResNet-{depth}; use "
                          "pretrained_backbone for ImageNet weights or pass a state_dict file")
    if nl_type is None or nl_nums == 0:
        nl_type, nl_nums, order = None, 0, None
    trained = bool(pretrained) or pretrained_backbone
    if trainable_backbone_layers is None:
        trainable_backbone_layers = 3 if trained else 5  # torchvision's defaults
    frozen_bn = trained if frozen_bn is None else frozen_bn
    if not 0 <= trainable_backbone_layers <= 5:
        raise ConfigError(f"trainable_backbone_layers must be in 0..5, got {trainable_backbone_layers!r}")
    output_relu = resolve_output_relu(nl_type, output_relu, zero_init=True)
    block_args = dict(nl_type=nl_type, nl_nums=nl_nums, stage_num=stage_num, div=div, is_sys=is_sys,
                      is_norm=is_norm, order=order)
    backbone = nonlocal_backbone(depth, nl_type, nl_nums, trainable_backbone_layers, block_args, output_relu,
                                 pretrained_backbone=pretrained_backbone and not pretrained, frozen_bn=frozen_bn)
    detector = DETECTORS[model](backbone, num_classes=COCO_CLASSES if pretrained else num_classes,
                                **detector_kwargs)
    if pretrained:
        what = f"a torchvision {model} ResNet-{depth}-FPN state_dict"
        source = (_read_state_dict(pretrained) if isinstance(pretrained, (str, os.PathLike))
                  else _fetch(COCO_WEIGHTS[model], f"COCO {model} ResNet-50-FPN"))
        _remake_predictors(detector, num_classes)
        load_torchvision_detector(detector, source, what)
    detector.build_args = dict(backbone=model, arch=depth, num_classes=num_classes,
                               output_relu=output_relu, trainable_backbone_layers=trainable_backbone_layers,
                               frozen_bn=frozen_bn,
                               **block_args, **detector_kwargs)
    return detector


def _remake_predictors(detector: nn.Module, num_classes: int) -> None:
    """New box (and mask) predictors for num_classes (torchvision's own layer types) when it is not COCO's."""
    if num_classes == COCO_CLASSES:
        return
    heads = detector.roi_heads
    heads.box_predictor = FastRCNNPredictor(heads.box_predictor.cls_score.in_features, num_classes)
    if getattr(heads, "mask_predictor", None) is not None:
        logits = heads.mask_predictor.mask_fcn_logits
        heads.mask_predictor = MaskRCNNPredictor(heads.mask_predictor.conv5_mask.in_channels,
                                                 logits.in_channels, num_classes)
