import pytest
import tiktoken

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


def test_hash_check_is_on(monkeypatch):
    import gpt2exp.tokenizer as tokenizer

    monkeypatch.setattr(tokenizer, "_VOCAB_BPE_SHA256", "0" * 64)
    tokenizer.get_encoding.cache_clear()
    try:
        with pytest.raises(ValueError, match="[Hh]ash"):
            tokenizer.get_encoding()
    finally:
        monkeypatch.undo()
        tokenizer.get_encoding.cache_clear()
    assert isinstance(tokenizer.get_encoding(), tiktoken.Encoding)
