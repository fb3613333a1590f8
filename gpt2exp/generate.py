"""``python -m gpt2exp.generate``: see `gpt2exp.cli.generate`."""

from gpt2exp.cli.generate import main

if __name__ == "__main__":
    main()
