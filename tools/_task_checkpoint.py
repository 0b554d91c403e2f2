"""A checkpoint of one task (re-ID, detection) as the picture tools of that task read it: its model rebuilt from
the stored model_args in eval mode, and the run's flags (args) that say which data and preprocessing it used.

tools/_loaded_model.py serves the attention tools of every task; the retrieval and detection pictures need only
this much, and a one-line refusal of another task's checkpoint naming the entry point to use it with.
"""
import torch

from lib.engine.checkpoint import load_checkpoint
from models.checkpoints import rebuild_model
from models.tasks import require_task


def load_task_model(path, task, device="cpu"):
    """(model in eval mode on device, the run's args dict, the checkpoint dict) of a `task` checkpoint at path;
    ConfigError (one line) for an unreadable file or another task's checkpoint."""
    checkpoint = load_checkpoint(path)
    require_task(checkpoint, path, task)
    model = rebuild_model(checkpoint, source=path).to(torch.device(device)).eval()
    return model, dict(checkpoint.get("args") or {}), checkpoint


def progress(checkpoint):
    """'epoch N' of a checkpoint, for titles; '' when it does not say."""
    return f"epoch {checkpoint['epoch']}" if checkpoint.get("epoch") is not None else ""
