"""Evaluation: held-out perplexity through strided windows; standard tasks through
lm-evaluation-harness (imported only when tasks run).

Imports the leaves and `gpt2exp.modeling`."""
