"""``python -m gpt2exp <command> ...``: the `gpt2exp` console command (see `gpt2exp.cli.front_door`)."""

from gpt2exp.cli.front_door import main

if __name__ == "__main__":
    main()
