"""The run machinery every entry point shares (train_val.py, train_seg.py): command line and recipes, checkpoints
and resume, the run-folder lock (run_lock), logging, metrics, learning-rate schedules, torchrun / DDP and
synchronized BatchNorm.

Nothing here is needed to use the blocks themselves (`lib.build_nonlocal`)."""
