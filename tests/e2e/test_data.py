"""Tests of gpt2exp.data through the entrypoints: a corpus's token files, and the splits a run is scored on."""
import json
import math

import pytest
from helpers import TINY, run_folders

from gpt2exp.benchmarks.corpus import tokenize_in_process, write_corpus
from gpt2exp.tokenizer import get_encoding


def test_hf_tokenizing_memory_stays_flat_as_the_corpus_grows(tmp_path):
    """Peak RSS of a process tokenizing a 16x larger corpus (2 MB, then 32 MB: about 0.5M, then
    7.7M tokens) grows by less than half of what the added tokens take as uint16 (about 14 MB):
    a tokenizer that kept the corpus's tokens in memory, even as uint16, would fail this."""
    tokens, peaks = [], []
    for megabytes in (2, 32):
        folder = tmp_path / f"{megabytes}mb"
        folder.mkdir()
        _, count, peak_mb = tokenize_in_process("gpt2exp", write_corpus(folder, megabytes), folder / "out")
        tokens.append(count)
        peaks.append(peak_mb)
    added_as_uint16_mb = (tokens[1] - tokens[0]) * 2 / 2**20
    assert peaks[1] - peaks[0] < added_as_uint16_mb / 2, (peaks, added_as_uint16_mb)


def test_a_run_on_a_local_corpus_with_a_test_split_ends_scored_on_that_split(run_module, tmp_path):
    """A folder of WikiText-style files (train, valid and test, each its own text) trains on the
    first, is validated on the second and, at the end, scored on the test split: every one of its
    tokens but the first, in summary.json and in the log."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    texts = {split: f" = {split.title()} = \n" + f" The {split} fox jumps over the {split} dog . \n" * (300 + n * 50)
             for n, split in enumerate(("train", "valid", "test"))}
    for split, text in texts.items():
        (folder / f"wiki.{split}.tokens").write_text(text, encoding="utf-8")
    result = run_module("gpt2exp.train", *TINY, "data=wikitext2", f"data.local_dir={folder}", "trainer.max_steps=2",
                        "logger=none")
    assert result.returncode == 0, result.stderr
    [run_dir] = run_folders(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    test_tokens = len(get_encoding().encode(texts["test"])) - 1
    assert summary["test/tokens"] == test_tokens
    assert summary["test/perplexity"] == pytest.approx(math.exp(summary["test/loss"]))
    assert f"test: {test_tokens:,} tokens | loss {summary['test/loss']:.4f}" in result.stdout + result.stderr
