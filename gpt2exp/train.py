"""``python -m gpt2exp.train``: see `gpt2exp.cli.train`."""

from gpt2exp.cli.train import main

if __name__ == "__main__":
    main()
