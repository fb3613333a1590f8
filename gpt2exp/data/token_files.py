"""The one way text becomes training tokens: a source's rows, read as a stream of bounded text
pieces, tokenized a batch at a time by tiktoken's threads and written straight into a uint16
token file that training memory-maps. Nothing holds all the tokens.

The token file starts with a header that says what it holds (its token count, the key of its
source, a checksum of the first and last bytes of each local file); a file whose header does
not match is rebuilt, so a truncated file, or sources changed in place, never train silently."""

import hashlib
import itertools
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm.auto import tqdm

from gpt2exp.atomic import write_atomic
from gpt2exp.data.files import BATCH_CHARS, ROWS_PER_BATCH, Piece, row_pieces
from gpt2exp.errors import UserError
from gpt2exp.tokenizer import EOT_TOKEN, get_encoding

log = logging.getLogger("gpt2exp.data")

HEADER_BYTES = 4096
_MAGIC = b"gpt2exp token file\n"
_SAMPLE_BYTES = 1 << 16  # of each end of each local file, in the header's checksum


@dataclass(frozen=True)
class TokenSource:
    """The rows of one token file, and what its tokens depend on."""

    label: str  # the file is `<label>-<key>.bin`
    identity: dict  # what the rows are (hashed, with the separator and the encoding, into the key)
    rows: Callable[[], Iterator[Piece]]  # the rows' text in pieces; read only when the file is built
    separator: str = ""  # written after each row
    special: bool = False  # whether "<|endoftext|>" in the text is the end-of-text token (else: text)
    files: tuple[Path, ...] = ()  # local files whose first and last bytes the header checks
    if_empty: str | None = None  # the UserError when the rows hold no text (None: an empty file is fine)
    progress: str = "tokenizing"


def token_file(source: TokenSource, cache_dir: Path) -> np.memmap:
    """The token ids of `source`'s rows, `source.separator` after each, as a read-only uint16
    memmap of `cache_dir/<label>-<key>.bin`: tokenized only on a miss (or a file that fails its
    header's checks), written atomically."""
    identity = {**source.identity, "separator": source.separator, "encoding": get_encoding().name}
    if source.special:
        identity["special"] = [EOT_TOKEN]
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    path = cache_dir / f"{source.label}-{key[:16]}.bin"
    header = {"source": key, "sample": _sample_checksum(source.files)}
    problem = _header_problem(path, header)
    if problem:
        if path.exists():
            log.warning("data: rebuilding the token file %s: %s", path, problem)

        def write(file: BinaryIO) -> None:
            file.write(bytes(HEADER_BYTES))
            tokens = tokenize_pieces(_batches(source.rows()), source.separator, file, special=source.special,
                                     label=source.progress)
            if tokens == 0 and source.if_empty:
                raise UserError(source.if_empty)
            file.seek(0)
            file.write(_header_bytes({**header, "tokens": tokens}))

        write_atomic(path, write)
    return np.memmap(path, dtype=np.uint16, mode="r", offset=HEADER_BYTES)


def text_source(text: str, label: str) -> TokenSource:
    """A text held whole (a corpus split by characters or documents) as a token file's one row,
    "<|endoftext|>" in it the end-of-text token: the ids of encoding the whole text at once."""
    digest = hashlib.sha256(text.encode()).hexdigest()
    return TokenSource(label, {"text": digest}, lambda: row_pieces(text, cut_anyway=False), special=True)


def tokenize_pieces(batches: Iterable[list[Piece]], separator: str, file: BinaryIO, *, special: bool = False,
                    label: str = "tokenizing", threads: int | None = None) -> int:
    """Write the GPT-2 ids of every batch of pieces, `separator` after each row's last piece, to
    `file` as uint16; returns the number of tokens. tiktoken encodes a batch on `threads` threads;
    `special`: "<|endoftext|>" in the text is the end-of-text token."""
    encoding = get_encoding()
    after = encoding.encode(separator, allowed_special="all")
    threads = threads or os.cpu_count() or 1
    count = 0
    with tqdm(desc=label, unit="rows", unit_scale=True, disable=None) as bar:
        for batch in batches:
            texts = [text for text, _ in batch]
            if special:
                ids = encoding.encode_batch(texts, num_threads=threads, allowed_special={EOT_TOKEN})
            else:
                ids = encoding.encode_ordinary_batch(texts, num_threads=threads)
            ends = [row_ends for _, row_ends in batch]
            flat = np.fromiter(itertools.chain.from_iterable(
                itertools.chain(piece, after) if row_ends else piece for piece, row_ends in zip(ids, ends)),
                dtype=np.uint16)
            file.write(flat.tobytes())
            count += len(flat)
            bar.update(sum(ends))
    return count


def _batches(pieces: Iterator[Piece]) -> Iterator[list[Piece]]:
    """Pieces grouped into batches of about `BATCH_CHARS` characters (at most `ROWS_PER_BATCH` pieces)."""
    batch: list[Piece] = []
    chars = 0
    for piece in pieces:
        batch.append(piece)
        chars += len(piece[0])
        if chars >= BATCH_CHARS or len(batch) >= ROWS_PER_BATCH:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _header_bytes(header: dict) -> bytes:
    return (_MAGIC + json.dumps(header, sort_keys=True).encode()).ljust(HEADER_BYTES, b" ")


def _header_problem(path: Path, expected: dict) -> str | None:
    """What is wrong with the token file at `path` (None: nothing) against the header expected."""
    try:
        with path.open("rb") as file:
            raw, size = file.read(HEADER_BYTES), os.fstat(file.fileno()).st_size
    except FileNotFoundError:
        return "missing"
    try:
        header = json.loads(raw[len(_MAGIC):]) if raw.startswith(_MAGIC) and len(raw) == HEADER_BYTES else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or not isinstance(header.get("tokens"), int):
        return "it has no valid header"
    if header.get("source") != expected["source"]:
        return "its header names other sources"
    if size - HEADER_BYTES != 2 * header["tokens"]:
        return f"it holds {size - HEADER_BYTES} bytes of tokens, its header says {header['tokens']} tokens"
    if header.get("sample") != expected["sample"]:
        return "its source files changed since it was made (their first or last bytes differ)"
    return None


def _sample_checksum(files: Iterable[Path]) -> str:
    """A sha256 of the size, the first and the last `_SAMPLE_BYTES` of each file."""
    digest = hashlib.sha256()
    for file in files:
        try:
            with file.open("rb") as data:
                size = os.fstat(data.fileno()).st_size
                digest.update(f"{size}\0".encode() + data.read(_SAMPLE_BYTES))
                data.seek(max(0, size - _SAMPLE_BYTES))
                digest.update(data.read(_SAMPLE_BYTES))
        except OSError as err:
            raise UserError(f"data.path: cannot read '{file}' ({err.strerror or err})") from None
    return digest.hexdigest()
