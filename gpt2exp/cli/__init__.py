"""The command line: Hydra registration, the experiment presets source, what every command
shares, and the commands (`python -m gpt2exp.<command>` runs `gpt2exp.cli.<command>`).

May import every other layer; nothing imports it."""
