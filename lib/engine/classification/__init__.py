"""Image classification (train_val.py): its flags (cli), its recipe (recipe), its run folder, best-accuracy
tracker and closing line (run)."""
