"""``python -m gpt2exp.compare``: see `gpt2exp.cli.compare`."""

from gpt2exp.cli.compare import main

if __name__ == "__main__":
    main()
