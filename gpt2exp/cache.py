"""The folder where gpt2exp keeps what it derives once and reads back later (token files, the
tokenizer's tables, the inference layout chosen by measuring): ``$GPT2EXP_CACHE_DIR``, else
``~/.cache/gpt2exp``."""

import os
from pathlib import Path


def folder(configured: str | None = None) -> Path:
    """`configured` (a config key's value) when given, else the environment's or the default folder."""
    return Path(configured or os.environ.get("GPT2EXP_CACHE_DIR") or "~/.cache/gpt2exp").expanduser()
