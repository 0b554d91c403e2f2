"""The network a checkpoint holds, rebuilt with its weights, for any task (classification, segmentation, video).

    checkpoint = lib.engine.checkpoint.load_checkpoint(path)        # the dict; one-line errors for bad files
    model = rebuild_model(checkpoint)                                # ours: from the stored model_args
    model = rebuild_model(checkpoint, flag_kwargs, source=path)      # the reference's: from the model flags
    model = rebuild_model(checkpoint, flag_kwargs, source=path, notice=log.info)  # ...saying which unit it got

One place for what the tools, hubconf.py and the entry points' --valid paths each did: choose the builder of the
checkpoint's task, fill in model arguments that predate a later one, and load the weights strictly.
"""
from typing import Callable, Optional

import torch
from torch import nn

from lib.errors import ConfigError
from models import build_model, classifier_size, load_state_dict_checked
from models.common import reference_unit, unit_text, with_output_relu
from models.segmentation import build_segmentor, load_segmentor_state
from models.tasks import TASKS, checkpoint_task


def rebuild_model(checkpoint: dict, flag_kwargs: Optional[dict] = None, source: str = "checkpoint",
                  notice: Optional[Callable[[str], None]] = None) -> nn.Module:
    """The model of a loaded checkpoint dict, its weights restored, on the CPU in train mode.

    Ours are rebuilt from their stored `model_args`. One without them (the reference's classification
    checkpoints, early segmentation ones) is built from flag_kwargs, the builder's keywords from the command line;
    a missing num_classes is the size of the checkpoint's classifier; a reference classification checkpoint gets
    the reference's block unit unless flag_kwargs set output_relu (models.common.reference_unit), and notice(line)
    says which. source names the checkpoint in errors and the notice.
    Raises ConfigError when there is nothing to build from or the weights do not fit.
    """
    task = checkpoint_task(checkpoint)
    builder, load = (build_segmentor, load_segmentor_state) if task == "segmentation" else \
        (build_model, load_state_dict_checked)
    saved = checkpoint.get("model_args")
    if saved:
        kwargs = with_output_relu(saved)  # a checkpoint from before output_relu was stored
    elif flag_kwargs is not None and task != "video":  # every video checkpoint stores its model_args
        kwargs = dict(flag_kwargs)
        if task == "classification":
            if notice is not None:
                notice(reference_notice(source, kwargs))
            kwargs = reference_unit(kwargs)
            if kwargs.get("num_classes") is None:
                kwargs["num_classes"] = classifier_size(checkpoint["state_dict"])
    else:
        raise ConfigError(f"{source} is a {task} checkpoint without model arguments (they are written by "
                          f"{TASKS[task]}){'' if task == 'video' else ': pass the model flags it was trained with'}")
    return _built_with_state(builder, kwargs, checkpoint["state_dict"], load)


def reference_notice(source, flag_kwargs):
    """The line that says a classification checkpoint without model arguments was built from the model flags
    flag_kwargs, and with which block unit."""
    given, unit = flag_kwargs.get("output_relu"), reference_unit(flag_kwargs).get("output_relu")
    if unit is None:
        return f"=> {source} stores no model arguments (the reference's layout): built from the model flags"
    how = (f"as --output-relu {str(given).lower()} asks" if given is not None
           else "the reference's unit (--output-relu false for the other)")
    return (f"=> {source} stores no model arguments (the reference's layout): built from the model flags, "
            f"{unit_text(unit)}, {how}")


def _built_with_state(builder, kwargs, state_dict, load):
    """builder(**kwargs) filled by load(model, state_dict), built on the meta device first: no time goes into
    initializing weights that are overwritten (a ResNet-50 segmentor: ~0.5 s instead of ~3 s)."""
    with torch.device("meta"):
        model = builder(**kwargs)
    if any(name not in state_dict for name, _ in model.named_buffers()):  # a buffer no state_dict restores
        model = builder(**kwargs)
    else:
        model = model.to_empty(device="cpu")
    load(model, state_dict)
    return model
