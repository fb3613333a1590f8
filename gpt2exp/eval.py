"""``python -m gpt2exp.eval``: see `gpt2exp.cli.eval`."""

from gpt2exp.cli.eval import main

if __name__ == "__main__":
    main()
