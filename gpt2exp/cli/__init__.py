"""The command line: Hydra registration, the experiment presets source, what every command
shares, and the commands (`python -m gpt2exp.<command>` runs `gpt2exp.cli.<command>`).

The command modules import torch, and the modules that import it, inside the functions that
need them: Hydra imports a command's module for ``--help``, tab completion and a refused config,
which so answer without waiting for torch.

May import every other layer; nothing imports it."""
