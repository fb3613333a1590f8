"""Runs: what a run folder is (the files a run writes, claiming a folder and undoing a failed
run), W&B tracking and the run's own metric files, plots.

Imports the leaves and `gpt2exp.modeling`."""
