"""Runs: what a run folder is (the files a run writes, claiming a folder and undoing a failed
run), tracking (the run's own metric files; W&B, TensorBoard, CSV: `trackers/`), plots.

Imports the leaves and `gpt2exp.modeling`."""
