"""The run machinery every entry point shares (train_val.py, train_seg.py, train_video.py): command line and recipes
(cli, config, recipe; seg_cli for segmentation; the video subpackage for train_video.py's flags, recipe and
multi-clip test), checkpoints and resume (checkpoint, run_state; seg_run), the run-folder lock
(run_lock), logging and metrics (logger, metrics, segmetrics), learning-rate schedules (schedule, poly), seeding /
autocast / model preparation / exit codes (runtime), torchrun / DDP (distributed) and synchronized BatchNorm
(sync_bn).

Nothing here is needed to use the blocks themselves (`lib.build_nonlocal`)."""
