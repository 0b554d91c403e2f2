"""The run machinery every entry point shares (train_val.py, train_seg.py, train_video.py): command line and recipes
(cli, config, recipe; seg_cli for segmentation; the video subpackage for train_video.py's flags, recipe and
multi-clip test), checkpoints and resume (checkpoint, run_state; seg_run; resume_check: what a resume may change),
stopping and checkpointing between iterations (preemption: signals, --save-every budgets, errors every rank
hears), the run-folder lock (run_lock), logging and metrics (logger, metrics, segmetrics), learning-rate schedules
(schedule, poly), seeding / autocast / model preparation / exit codes (runtime), which entry point a checkpoint
belongs to (tasks), torchrun / DDP (distributed) and synchronized BatchNorm (sync_bn).

Nothing here is needed to use the blocks themselves (`lib.build_nonlocal`)."""
