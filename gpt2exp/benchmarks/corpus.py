"""Data-pipeline timings: tokenizing a corpus into the token cache, and reading it back."""

import tempfile
import time

import numpy as np

from gpt2exp.data import cached_tokens
from gpt2exp.tokenizer import get_encoding


def measure_token_cache(text: str) -> dict[str, float]:
    """Seconds to tokenize ``text`` and write it to an empty cache (``tokenize_s``), and to load
    it from the cache and read every token (``reload_s``); with the corpus's size."""
    get_encoding()  # built once per process, not part of either figure
    with tempfile.TemporaryDirectory(prefix="gpt2exp-bench-") as cache_dir:
        start = time.perf_counter()
        cached_tokens(text, cache_dir=cache_dir, label="bench")
        tokenize_s = time.perf_counter() - start
        start = time.perf_counter()
        tokens = np.array(cached_tokens(text, cache_dir=cache_dir, label="bench"))
        reload_s = time.perf_counter() - start
    return {"characters": len(text), "tokens": len(tokens), "tokenize_s": tokenize_s, "reload_s": reload_s}
