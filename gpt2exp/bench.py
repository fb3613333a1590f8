"""``python -m gpt2exp.bench``: see `gpt2exp.cli.bench`."""

from gpt2exp.cli.bench import main

if __name__ == "__main__":
    main()
