"""Evaluation: held-out perplexity through strided windows.

Imports the leaves and `gpt2exp.modeling`."""
