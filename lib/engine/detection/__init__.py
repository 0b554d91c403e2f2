"""Detection / instance segmentation task pieces (docs/detection.md); evaluation.py: COCO evaluation."""
