"""Moved to models/tasks.py (models/checkpoints.py needs it, and models never import the engine); the engine's
imports of it stay valid through this name."""
from models.tasks import TASKS, VIDEO_BACKBONES, args_task, checkpoint_task, require_task  # noqa: F401
