"""Tests of gpt2exp.data: corpora, the token cache and the sliding-window loaders."""


def test_hf_tokenizing_memory_stays_flat_as_the_corpus_grows(tmp_path):
    """Peak RSS of a process tokenizing a 16x larger corpus (2 MB, then 32 MB: about 0.5M, then
    7.7M tokens) grows by less than half of what the added tokens take as uint16 (about 14 MB):
    a tokenizer that kept the corpus's tokens in memory, even as uint16, would fail this."""
    from gpt2exp.benchmarks.corpus import tokenize_in_process, write_corpus

    tokens, peaks = [], []
    for megabytes in (2, 32):
        folder = tmp_path / f"{megabytes}mb"
        folder.mkdir()
        _, count, peak_mb = tokenize_in_process("gpt2exp", write_corpus(folder, megabytes), folder / "out")
        tokens.append(count)
        peaks.append(peak_mb)
    added_as_uint16_mb = (tokens[1] - tokens[0]) * 2 / 2**20
    assert peaks[1] - peaks[0] < added_as_uint16_mb / 2, (peaks, added_as_uint16_mb)
