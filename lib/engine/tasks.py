"""Which task (entry point) a checkpoint or a run folder belongs to: classification (train_val.py), segmentation
(train_seg.py) or video (train_video.py).

Checkpoints (in their stored "args") and args.yaml written since the video task arrived carry a "task" entry;
older ones are recognized by what they hold (a segmentor's model arguments have "aux"; a segmentation checkpoint
counts iterations, not epochs), so every tool can refuse a checkpoint of another kind in one line instead of a
TypeError deep inside a builder.
"""
from lib.errors import ConfigError
from models.video import VIDEO_BACKBONES

TASKS = {"classification": "train_val.py", "segmentation": "train_seg.py", "video": "train_video.py"}


def _infer(values, model_args):
    task = values.get("task") or (values.get("args") if isinstance(values.get("args"), dict) else {}).get("task")
    if task in TASKS:
        return task
    if "aux" in model_args or "iteration" in values or "iters" in values:
        return "segmentation"
    if model_args.get("backbone", values.get("backbone")) in VIDEO_BACKBONES or "clip_len" in values:
        return "video"
    return "classification"


def checkpoint_task(checkpoint):
    """The task of a loaded checkpoint dict (ours, any version, or the reference's: classification)."""
    return _infer(checkpoint, checkpoint.get("model_args") or {})


def args_task(args):
    """The task of a run from its args.yaml values (a dict)."""
    return _infer(args, {})


def require_task(checkpoint, path, task):
    """One line if the checkpoint at `path` belongs to another task than `task`, naming the entry point to use."""
    found = checkpoint_task(checkpoint)
    if found != task:
        raise ConfigError(f"{path} is a {found} checkpoint, not a {task} one: use it with {TASKS[found]}")
