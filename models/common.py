"""Pieces shared by both backbones: putting nonlocal blocks between the residual blocks of a stage."""
from contextlib import nullcontext
from typing import Callable, Iterable, List, Optional, Sequence

import torch
from torch import nn

from lib.errors import ConfigError
from lib.registry import NONLOCAL_BLOCKS, stage_based


def build_on(device, dtype, build: Callable[..., nn.Module], *args, **kwargs) -> nn.Module:
    """build(*args, **kwargs) with its tensors created on `device` (None: torch's default), then cast to `dtype`
    (None: kept): the device= / dtype= of the model builders. torchvision's layers take no device argument, so
    the device is made the default during construction (torch.device as a context manager); on 'meta' nothing
    is allocated."""
    with torch.device(device) if device is not None else nullcontext():
        model = build(*args, **kwargs)
    return model if dtype is None else model.to(dtype)


def assemble_stage(residual_blocks: Sequence[nn.Module], insert_after: Iterable[int],
                   make_nonlocal: Callable[[], nn.Module], stage_name: str,
                   nonlocal_paths: List[str]) -> nn.Sequential:
    """Return nn.Sequential of the residual blocks with a nonlocal block after each index in insert_after.

    The blocks are inserted into the same Sequential (not wrapped), as the reference does, so the module paths
    and state_dict keys of the later residual blocks shift by one per inserted block (docs/classification.md, "Models"):
    that is what lets a reference checkpoint load unchanged. The path of every inserted block
    ("<stage_name>.<index>") is appended to nonlocal_paths.
    """
    after = set(insert_after)
    modules = []
    for index, block in enumerate(residual_blocks):
        modules.append(block)
        if index in after:
            nonlocal_paths.append(f"{stage_name}.{len(modules)}")
            modules.append(make_nonlocal())
    return nn.Sequential(*modules)


def residual_indices(stage: nn.Sequential, stage_name: str, nonlocal_paths: Sequence[str]) -> List[int]:
    """Sequential indices of the residual blocks of a stage, in order, skipping the inserted nonlocal blocks.

    Entry i is where the i-th residual block of the plain network now sits; used to map the keys of a
    checkpoint without blocks (torchvision) onto a model with blocks.
    """
    return [index for index in range(len(stage)) if f"{stage_name}.{index}" not in nonlocal_paths]


def nonlocal_width(channels: int, div: float) -> int:
    """C' = int(C / div), the reference's inner width of a nonlocal block (docs/blocks.md)."""
    inner = int(channels / div)
    if inner < 1:
        raise ConfigError(f"div {div} leaves no inner channels for a nonlocal block of width {channels}")
    return inner


def resolve_output_relu(nl_type: Optional[str], output_relu: Optional[bool], zero_init: bool) -> Optional[bool]:
    """The output_relu a model stores in build_args: None where there is no such switch (no block, or not a
    stage-based one; a value given there is left for build_nonlocal to refuse), else True / False.

    None means False for a block that starts as the identity (zero_init: its output BN at weight 0 and bias 0):
    with Y = X + relu(BN(.)) relu's input would be exactly 0, whose gradient is 0, so no parameter of the block
    would ever change (docs/blocks.md, "output_relu"). Otherwise None means the unit's default.
    """
    if nl_type is None or not stage_based(nl_type) or output_relu is not None:
        return output_relu if nl_type is not None else None
    return False if zero_init else NONLOCAL_BLOCKS[nl_type].unit_cls.output_relu


def reference_unit(kwargs: dict) -> dict:
    """Image-model keywords for a checkpoint in the reference's layout (no stored model arguments): the reference
    trained every block with its unit's own output ReLU (Y = X + relu(BN(.)) for SNL), so where the flags leave
    output_relu unset that unit is built; a ResNet's own default (no ReLU, deviation 11) would compute other
    logits from the same weights once the blocks' BN weights are not zero."""
    if kwargs.get("output_relu") is not None:
        return kwargs
    return dict(kwargs, output_relu=resolve_output_relu(kwargs.get("nl_type"), None, zero_init=False))


def unit_text(output_relu: Optional[bool]) -> str:
    """How a model's blocks end, for the line that says which unit a reference checkpoint got."""
    if output_relu is None:
        return "no stage block"
    if output_relu:
        return "blocks with output ReLU, Y = X + relu(BN(.))"
    return "blocks without output ReLU, Y = X + BN(.)"


def with_output_relu(model_args: dict) -> dict:
    """A checkpoint's model_args with output_relu filled in where the checkpoint predates it (image and
    segmentation models): the value its rebuilt network now gets. PreResNet blocks keep their default; the
    zero-initialized ResNet / segmentation blocks get False, which gives the same outputs, since a block trained
    with the output ReLU kept its BN at weight 0 and bias 0 (it got no gradient)."""
    if "output_relu" in model_args or "backbone" not in model_args:
        return model_args
    zero_init = model_args["backbone"] != "preresnet"
    return dict(model_args, output_relu=resolve_output_relu(model_args.get("nl_type"), None, zero_init))


def residual_blocks(block, inplanes: int, width: int, stride: int, count: int):
    """(the `count` residual blocks of one stage, its output width): the first with a 1x1 convolution + BN shortcut
    where the shape changes (torchvision's and the reference's `downsample`), built in this order so that seeded
    initializations stay what they were."""
    outplanes = width * block.expansion
    downsample = None
    if stride != 1 or inplanes != outplanes:
        downsample = nn.Sequential(nn.Conv2d(inplanes, outplanes, kernel_size=1, stride=stride, bias=False),
                                   nn.BatchNorm2d(outplanes))
    return [block(inplanes, width, stride, downsample)] + [block(outplanes, width) for _ in range(1, count)], outplanes
