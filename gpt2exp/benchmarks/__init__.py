"""Benchmarks that print their figures (no timed tests): plain functions the bench entrypoint calls.

Imports the leaves, `gpt2exp.modeling`, `gpt2exp.data`, `gpt2exp.evaluation`, `gpt2exp.runs` and
`gpt2exp.training`."""
