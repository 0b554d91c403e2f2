"""The video-only pieces of train_video.py; the run itself (checkpoints, resume, run lock, logging, schedules,
torchrun) is lib/engine's lifecycle, shared with train_val.py and train_seg.py.

cli (the flags), recipe (the 3D-ResNets framework's recipes, applied to unset flags), setup (fine-tuning parameter
groups, 5-D memory format, data and the test loader) and multiclip (the multi-clip video-level test)."""
