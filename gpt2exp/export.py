"""``python -m gpt2exp.export``: see `gpt2exp.cli.export`."""

from gpt2exp.cli.export import main

if __name__ == "__main__":
    main()
