import hashlib

import pytest
import tiktoken

import gpt2exp.tokenizer as tokenizer
from gpt2exp.tokenizer import EOT_ID, get_encoding


def test_encodes_like_openai_gpt2():
    enc = get_encoding()
    assert enc.encode("World War I or the First") == [10603, 1810, 314, 393, 262, 3274]
    assert enc.encode("<|endoftext|>", allowed_special="all") == [EOT_ID] == [50256]
    assert enc.n_vocab == 50257


def test_round_trips_unicode_and_whitespace():
    enc = get_encoding()
    text = "Hello,  wörld!\n\n\tcafé 😀 <unk> 1234567"
    assert enc.decode(enc.encode(text)) == text


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """get_encoding built again, with an empty cache folder (and tiktoken's copies in one of its own)."""
    monkeypatch.setenv("GPT2EXP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    tokenizer.get_encoding.cache_clear()
    yield tmp_path / "cache" / tokenizer.KEPT_RANKS
    tokenizer.get_encoding.cache_clear()


def test_hash_check_is_on(monkeypatch, fresh_build):
    monkeypatch.setattr(tokenizer, "_VOCAB_BPE_SHA256", "0" * 64)
    tokenizer.get_encoding.cache_clear()
    try:
        with pytest.raises(ValueError, match="[Hh]ash"):
            tokenizer.get_encoding()
    finally:
        monkeypatch.undo()
        tokenizer.get_encoding.cache_clear()
    assert isinstance(tokenizer.get_encoding(), tiktoken.Encoding)


def test_the_ranks_are_kept_as_openais_r50k_base_file_and_a_later_build_reads_them(monkeypatch, fresh_build):
    expected = get_encoding().encode("World War I or the First")
    assert hashlib.sha256(fresh_build.read_bytes()).hexdigest() == tokenizer._R50K_BASE_SHA256

    def bpe_files_read(**_):
        raise AssertionError("the BPE files were read again")

    monkeypatch.setattr(tokenizer, "data_gym_to_mergeable_bpe_ranks", bpe_files_read)
    tokenizer.get_encoding.cache_clear()
    assert get_encoding().encode("World War I or the First") == expected == [10603, 1810, 314, 393, 262, 3274]


def test_a_kept_file_of_other_bytes_is_not_trusted_and_is_replaced(fresh_build):
    fresh_build.parent.mkdir(parents=True)
    # A well-formed ranks file that swaps two tokens' ranks: it would encode wrongly if used.
    fresh_build.write_bytes(b"IQ== 1\nIg== 0\n")
    assert get_encoding().encode("World War I or the First") == [10603, 1810, 314, 393, 262, 3274]
    assert hashlib.sha256(fresh_build.read_bytes()).hexdigest() == tokenizer._R50K_BASE_SHA256
