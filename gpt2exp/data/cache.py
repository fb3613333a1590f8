"""Text -> GPT-2 token ids, tokenized once and kept as a memory-mapped .npy file."""

import hashlib
import os
import re
from pathlib import Path

import numpy as np

from gpt2exp.atomic import write_atomic
from gpt2exp.tokenizer import EOT_TOKEN, get_encoding

# GPT-2's pre-tokenizer pattern always starts a new piece at a space followed by a non-space
# character: the piece before ends there (no piece joins a non-space character with the
# whitespace after it, and a run of whitespace gives up its last character to the next piece),
# and every piece that can start with a space (` ?\p{L}++`, ` ?\p{N}++`, ` ?[^\s\p{L}\p{N}]++`)
# depends only on the text after it. So cutting the text before such a space, unless a special
# token follows it, changes no piece and no token. (Whatever Python's re calls non-space, so
# does the pattern.)
SAFE_CUT = re.compile(r" (?=[^\s<])")
_CHUNK_CHARS = 1 << 16


def cached_tokens(text: str, *, cache_dir: str | Path, label: str) -> np.ndarray:
    """Return the token ids of `text` as a read-only uint16 memmap, tokenizing only on a miss.

    The file is `cache_dir/<label>-<hash>.npy`, the hash covering the text and the encoding;
    it is written atomically, and a file that does not load as uint16 ids is rebuilt.
    """
    encoding_name = get_encoding().name
    digest = hashlib.sha256(f"{encoding_name}\0{text}".encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{label}-{digest}.npy"
    tokens = _load(path)
    if tokens is None:
        write_atomic(path, lambda file: np.save(file, tokenize(text)))
        tokens = np.load(path, mmap_mode="r")
    return tokens


def tokenize(text: str, *, chunk_chars: int = _CHUNK_CHARS) -> np.ndarray:
    """GPT-2 token ids of `text` (end-of-text allowed), encoded in parallel chunks of about
    `chunk_chars` characters; the ids are those of encoding the whole text at once."""
    chunks = []
    start = 0
    while len(text) - start > chunk_chars:
        cut = SAFE_CUT.search(text, start + chunk_chars)
        if cut is None:
            break
        chunks.append(text[start : cut.start()])
        start = cut.start()
    chunks.append(text[start:])
    ids = get_encoding().encode_batch(chunks, num_threads=os.cpu_count() or 1, allowed_special={EOT_TOKEN})
    return np.concatenate([np.array(chunk_ids, dtype=np.uint16) for chunk_ids in ids])


def _load(path: Path) -> np.ndarray | None:
    """The cached ids, or None when the file is missing, truncated or not uint16 ids."""
    try:
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    return tokens if tokens.dtype == np.uint16 and tokens.ndim == 1 else None
