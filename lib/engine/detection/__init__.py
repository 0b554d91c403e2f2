"""Detection / instance segmentation (train_det.py, docs/detection.md): its flags (cli), torchvision's detection
recipe (recipe), data loaders and the warm-up by iterations (setup), its best-AP tracker, records and closing line
(run), and COCO evaluation (evaluation)."""
