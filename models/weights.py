"""Loading weights into the models: our / the reference's checkpoints, and torchvision's ResNet weights.

- load_state_dict_checked: strict loading for eval and resume, with one-line ConfigErrors for a checkpoint of
  another architecture, and the reference's quirks handled (docs/deviations.md).
- classifier_size: how many classes a checkpoint's classifier has (a reference CIFAR checkpoint has 1000).
- load_torchvision_resnet: torchvision ImageNet weights (downloaded, or a local file) into our ResNet.
- load_shifted_state_dict: a plain backbone's state_dict into a model with blocks in its layer1..4 (the ResNets
  here and the video models, models/video.py).
"""
import os
from typing import Dict, List, Mapping, Union

import torch
import torchvision
from torch import nn

from lib.errors import ConfigError
from models.common import residual_indices

# How many names a mismatch message lists before "...".
SHOWN_KEYS = 3
# torchvision's original ImageNet weights (V1), which the reference's model_urls point to; V2 has another recipe.
TORCHVISION_WEIGHTS = {50: torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
                       101: torchvision.models.ResNet101_Weights.IMAGENET1K_V1,
                       152: torchvision.models.ResNet152_Weights.IMAGENET1K_V1}
StateDict = Mapping[str, torch.Tensor]


def strip_module_prefix(state_dict: StateDict) -> Dict[str, torch.Tensor]:
    """Drop the "module." prefix that nn.DataParallel / DistributedDataParallel put on every key."""
    prefix = "module."
    return {key[len(prefix):] if key.startswith(prefix) else key: value for key, value in state_dict.items()}


def classifier_size(state_dict: StateDict) -> int:
    """Number of outputs of the classifier stored in a state_dict: fc2 (PreResNet) first, else fc (ResNet).

    fc2 wins because a reference CIFAR checkpoint holds both a used 1000-way fc2 and an unused fc.
    """
    state_dict = strip_module_prefix(state_dict)
    for key in ("fc2.weight", "fc.weight"):
        if key in state_dict:
            return int(state_dict[key].shape[0])
    raise ConfigError("checkpoint has no classifier (neither fc2.weight nor fc.weight): not a model of this repo")


def _describe(model: nn.Module) -> str:
    args = getattr(model, "build_args", None)
    if not args:
        return type(model).__name__
    blocks = f"{args['nl_nums']} {args['nl_type']} block(s)" if args["nl_type"] else "no nonlocal blocks"
    return f"{args['backbone']}-{args['arch']} with {blocks}, {args['num_classes']} classes"


def _first(keys: List[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (", ..." if len(keys) > SHOWN_KEYS else "")


def _mismatch(model_state: StateDict, state_dict: StateDict, ignore_missing=()) -> List[str]:
    """Human-readable problems (missing / unexpected keys, shape mismatches) of loading state_dict."""
    missing = [k for k in model_state if k not in state_dict and k not in ignore_missing]
    unexpected = [k for k in state_dict if k not in model_state]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in model_state.items()
              if k in state_dict and state_dict[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_first(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches, checkpoint vs model ({_first(shapes)})")
    return problems


def load_state_dict_checked(model: nn.Module, state_dict: StateDict) -> None:
    """Load a checkpoint's state_dict into model strictly, or raise a one-line ConfigError saying what differs.

    Accepts our checkpoints and the reference's: strips a "module." prefix (DataParallel / DDP), and for
    PreResNet drops the entries of the reference's unused conv1 / maxpool / fc modules with a printed notice
    (docs/deviations.md, item 5). Anything else that does not fit (another depth, another
    nl_type, fewer classes) raises ConfigError naming the first few missing / unexpected keys and shape mismatches.
    """
    model = getattr(model, "module", model)  # a DataParallel / DDP wrapper: load into the wrapped model
    state_dict = strip_module_prefix(state_dict)
    unused = getattr(model, "REFERENCE_UNUSED_MODULES", ())
    dropped = [k for k in state_dict if k.split(".")[0] in unused]
    if dropped:
        print(f"=> checkpoint in the reference's layout: dropping its unused entries {', '.join(dropped)}")
        state_dict = {k: v for k, v in state_dict.items() if k not in dropped}
    model_state = model.state_dict()
    problems = _mismatch(model_state, state_dict)
    if problems:
        hint = ""
        classifier = next((k for k in ("fc2.weight", "fc.weight") if k in model_state), None)
        if classifier in state_dict and state_dict[classifier].shape[0] != model_state[classifier].shape[0]:
            hint = f" (its classifier has {classifier_size(state_dict)} classes: build the model with that many)"
        raise ConfigError(f"checkpoint does not fit {_describe(model)}: {'; '.join(problems)}{hint}")
    model.load_state_dict(state_dict)


def _read_state_dict(path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"pretrained weights file not found: {path}") from None
    except Exception as error:  # unpickling errors have no common type; any of them means an unusable file
        raise ConfigError(f"could not read pretrained weights {path}: {error}") from None
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]  # a training checkpoint wrapping the state_dict
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"pretrained weights {path} hold a {type(loaded).__name__}, not a state_dict")
    return dict(loaded)


def _download_torchvision(depth: int) -> Dict[str, torch.Tensor]:
    weights = TORCHVISION_WEIGHTS[depth]
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except OSError as error:  # URLError, socket and SSL errors are all OSErrors
        raise ConfigError(f"could not download torchvision's ResNet-{depth} weights ({weights.url}): {error}; "
                          "pass a local path to a torchvision-format state_dict instead") from None


def load_torchvision_resnet(model: nn.Module, pretrained: Union[bool, str, os.PathLike]) -> None:
    """Load torchvision ImageNet weights (True: download them; a str: a torchvision-format state_dict file).

    The nonlocal blocks sit inside layer3 / layer4, so torchvision's residual block layerL.i lives at a
    shifted index here: keys are renamed accordingly. The blocks keep their (identity) init, and fc is skipped,
    with a notice, when its size differs from the model's num_classes. Any other mismatch raises ConfigError.
    """
    depth = model.depth
    from_file = isinstance(pretrained, (str, os.PathLike))
    source = _read_state_dict(pretrained) if from_file else _download_torchvision(depth)
    load_shifted_state_dict(model, source, f"a torchvision ResNet-{depth} state_dict")


def load_shifted_state_dict(model: nn.Module, source: StateDict, what: str) -> None:
    """Load the state_dict of the plain backbone (no nonlocal blocks) into model, whose blocks sit inside its
    layer1..4 Sequentials (model.nonlocal_paths): the residual block layerL.i of the source is renamed to its
    shifted index here. The blocks keep their (identity) init, and fc is skipped, with a notice, when its size
    differs from the model's. Any other mismatch raises a ConfigError saying the file is not `what`.
    """
    source = strip_module_prefix(source)
    renamed = {}
    index_maps = {name: residual_indices(getattr(model, name), name, model.nonlocal_paths)
                  for name in ("layer1", "layer2", "layer3", "layer4")}
    for key, value in source.items():
        parts = key.split(".")
        if parts[0] in index_maps and len(parts) > 2 and parts[1].isdigit():
            indices = index_maps[parts[0]]
            if int(parts[1]) >= len(indices):  # renaming it could collide with a shifted key: stop here
                raise ConfigError(f"pretrained weights are not {what}: {key} "
                                  f"is beyond the {len(indices)} residual blocks of {parts[0]}")
            parts[1] = str(indices[int(parts[1])])
        renamed[".".join(parts)] = value
    model_state = model.state_dict()
    keep_own = [k for k in model_state if any(k.startswith(p + ".") for p in model.nonlocal_paths)]
    if "fc.weight" in renamed and renamed["fc.weight"].shape != model_state["fc.weight"].shape:
        print(f"=> pretrained classifier has {renamed['fc.weight'].shape[0]} classes, the model "
              f"{model_state['fc.weight'].shape[0]}: keeping the model's freshly initialized fc")
        renamed = {k: v for k, v in renamed.items() if k.split(".")[0] != "fc"}
        keep_own += ["fc.weight", "fc.bias"]
    problems = _mismatch(model_state, renamed, ignore_missing=set(keep_own))
    if problems:
        raise ConfigError(f"pretrained weights are not {what}: {'; '.join(problems)}")
    model.load_state_dict(renamed, strict=False)
