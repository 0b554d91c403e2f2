"""The video-only pieces of train_video.py's run machinery; everything else (checkpoints, resume, run lock, logging,
schedules, torchrun) is lib/engine's, shared with train_val.py and train_seg.py.

cli (the flags), recipe (the 3D-ResNets framework's recipes, applied to unset flags), setup (model arguments,
fine-tuning parameter groups, 5-D memory format, loaders) and multiclip (the multi-clip video-level test)."""
