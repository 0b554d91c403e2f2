"""train_seg.py's own engine pieces: its flags and the authors' mmsegmentation recipe (cli), the best mIoU and the
closing line (run), mIoU from confusion matrices (metrics) and the poly learning-rate schedule (poly). The run
itself (iteration checkpoints, resume, preemption, records) is lib/engine's lifecycle."""
