"""``gpt2exp <command> [args ...]``: the one console command. ``gpt2exp --help`` lists the
commands; ``gpt2exp <command> ...`` runs ``python -m gpt2exp.<command> ...`` in this process,
so ``gpt2exp <command> --help`` lists that command's keys (`gpt2exp.cli.help`). Light on
imports: only the command asked for is imported."""

import importlib
import sys

from gpt2exp.cli.messages import fail

COMMANDS = {
    "train": "train a GPT-2 model (the CPU quickstart by default); -m sweeps over keys",
    "generate": "sample continuations of prompts from a trained checkpoint",
    "eval": "held-out perplexity (strided) of a checkpoint or a Hugging Face GPT-2 folder",
    "export": "write a checkpoint as a Hugging Face folder that transformers loads",
    "compare": "compare run folders or a sweep side by side: a table and plots, offline",
    "bench": "measure this machine: matmul peak, training speed and MFU beside transformers, generation",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {summary}" for name, summary in COMMANDS.items()]
    return "\n".join([
        "usage: gpt2exp <command> [group=option ...] [key=value ...]",
        "",
        "Train, sample, evaluate and compare GPT-2 models (Hydra configs; W&B logging).",
        "",
        "commands:",
        *lines,
        "",
        "gpt2exp <command> --help lists a command's keys with their meanings, defaults and allowed values.",
        "Each command is also python -m gpt2exp.<command>.",
    ])


def main(argv: list[str] | None = None) -> None:
    """Run the command that `argv` (default: the command line) names, with the rest of it."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        fail(f"gpt2exp {name}: no such command; the commands: {', '.join(COMMANDS)} (gpt2exp --help)")
    command = importlib.import_module(f"gpt2exp.cli.{name}")
    sys.argv = [f"gpt2exp-{name}", *rest]  # as its own console command names it (tab completion installs for it)
    command.main()
