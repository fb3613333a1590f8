"""Training: the loop, its hooks, resume and reuse, distributed data parallel (DDP, FSDP2), and a
whole run from its typed config.

Imports the leaves, `gpt2exp.modeling`, `gpt2exp.data`, `gpt2exp.evaluation` and `gpt2exp.runs`."""
