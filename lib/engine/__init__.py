"""The run machinery of the entry points (train_val.py, train_seg.py, train_video.py).

Shared by all three: checkpoint files and crash-safe writes (checkpoint), what a resume may change (resume_check),
which entry point a checkpoint belongs to (tasks), the epoch loop with its mid-epoch checkpoints (epochs) and
evaluation loop (evaluation), stopping between iterations on signals and budgets, with errors every rank hears
(preemption), the run-folder lock (run_lock), logging (logger, metrics), seeding / autocast / model preparation /
main() and exit codes (runtime), torchrun / DDP (distributed), synchronized BatchNorm (sync_bn).
Classification (train_val.py, whose flags, recipe and run state train_video.py builds on): cli, config, recipe,
schedule, run_state. One subpackage per other task: segmentation (flags and recipe, iteration checkpoints, mIoU,
poly schedule) and video (flags and recipe, data and model setup, the multi-clip test).

Nothing here is needed to use the blocks themselves (`lib.build_nonlocal`)."""
