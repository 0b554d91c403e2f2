"""train_seg.py's own engine pieces: its flags and the authors' mmsegmentation recipe (cli), iteration checkpoints
and resume (run), mIoU from confusion matrices (metrics) and the poly learning-rate schedule (poly). The shared
machinery (checkpoint files, preemption, logging, distributed) is in lib/engine."""
