"""Corpora larger than memory: a Hugging Face hub dataset (through ``datasets``: downloaded, or
streamed) or local parquet / json / csv / text files (read in place, see `data.files`), a bounded
batch of text at a time, tokenized by tiktoken's threads and written straight into a uint16 token
file that training memory-maps. Nothing holds the whole text, nor all its tokens.

The token file starts with a header that says what it holds (its token count, the key of its
sources, a checksum of the first and last bytes of each local file); a file whose header does
not match is rebuilt, so a truncated file, or sources changed in place, never train silently."""

import hashlib
import itertools
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from gpt2exp.atomic import write_atomic
from gpt2exp.config import DataConfig
from gpt2exp.data.files import (
    BATCH_CHARS,
    ROWS_PER_BATCH,
    Piece,
    check_column,
    data_files,
    read_pieces,
    row_pieces,
    text_of,
)
from gpt2exp.errors import UserError
from gpt2exp.tokenizer import get_encoding

log = logging.getLogger("gpt2exp.data")

HEADER_BYTES = 4096
_MAGIC = b"gpt2exp token file\n"
_SAMPLE_BYTES = 1 << 16  # of each end of each local file, in the header's checksum


def split_tokens(cfg: DataConfig, cache_dir: Path) -> tuple[np.memmap, np.memmap]:
    """(train, val) token ids: `data.split_train` and `data.split_val` of a hub dataset, or, for
    local files (or `split_val: null`), the first `train_ratio` of the tokens and the rest."""
    files = data_files(cfg.path)
    train = token_file(cfg, "train" if files else cfg.split_train, cache_dir, files)
    if cfg.split_val and not files:
        return train, token_file(cfg, cfg.split_val, cache_dir, files)
    cut = int(len(train) * cfg.train_ratio)
    return train[:cut], train[cut:]


def eval_text(cfg: DataConfig, split: str) -> str:
    """The text `gpt2exp.eval` scores: local files whole (they have no splits), else the hub
    dataset's `split` ("valid": `data.split_val`; "test": its "test" split), rows joined by
    `data.separator` as in the token file."""
    files = data_files(cfg.path)
    if not files:
        if split == "valid" and not cfg.split_val:
            raise UserError("eval.split=valid: data.split_val is null, so the dataset has no validation split")
        pieces = _hub_pieces(cfg, cfg.split_val if split == "valid" else "test")
    else:
        pieces = read_pieces(files, cfg.text_column)
    return "".join(text + cfg.separator if row_ends else text for text, row_ends in pieces)


def token_file(cfg: DataConfig, split: str, cache_dir: Path, files: list[Path]) -> np.memmap:
    """The token ids of `split` of `cfg`'s dataset (`files`, or the hub dataset when there are
    none), rows joined by `cfg.separator`, as a read-only uint16 memmap:
    `cache_dir/hf-<split>-<hash>.bin`, tokenized only on a miss (or a file that fails its
    header's checks), written atomically."""
    key = hashlib.sha256(json.dumps(_source_identity(cfg, split, files), sort_keys=True).encode()).hexdigest()
    path = cache_dir / f"hf-{split}-{key[:16]}.bin"
    header = {"source": key, "sample": _sample_checksum(files)}
    problem = _header_problem(path, header)
    if problem:
        if path.exists():
            log.warning("data: rebuilding the token file %s: %s", path, problem)

        def write(file) -> None:
            file.write(bytes(HEADER_BYTES))
            pieces = read_pieces(files, cfg.text_column) if files else _hub_pieces(cfg, split)
            tokens = tokenize_pieces(_batches(pieces), cfg.separator, file, label=f"tokenizing {cfg.path} {split}")
            if tokens == 0:
                raise UserError(f"data.path: split {split!r} of {cfg.path!r} holds no text in column "
                                f"{cfg.text_column!r}")
            file.seek(0)
            file.write(_header_bytes({**header, "tokens": tokens}))

        write_atomic(path, write)
    return np.memmap(path, dtype=np.uint16, mode="r", offset=HEADER_BYTES)


def tokenize_pieces(batches: Iterable[list[Piece]], separator: str, file, *, label: str = "tokenizing",
                    threads: int | None = None) -> int:
    """Write the GPT-2 ids of every batch of pieces, `separator` after each row's last piece, to
    `file` as uint16; returns the number of tokens. tiktoken encodes a batch on `threads` threads."""
    from tqdm.auto import tqdm

    encoding = get_encoding()
    after = encoding.encode(separator, allowed_special="all")
    threads = threads or os.cpu_count() or 1
    count = 0
    with tqdm(desc=label, unit="rows", unit_scale=True, disable=None) as bar:
        for batch in batches:
            ids = encoding.encode_ordinary_batch([text for text, _ in batch], num_threads=threads)
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
    batch, chars = [], 0
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


def _sample_checksum(files: list[Path]) -> str:
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


def _hub_pieces(cfg: DataConfig, split: str) -> Iterator[Piece]:
    import datasets

    dataset = _load_hub(cfg, split)
    if dataset.column_names is not None:
        check_column(cfg.text_column, dataset.column_names, cfg.path)
    if isinstance(dataset, datasets.Dataset):
        dataset = dataset.select_columns([cfg.text_column])
    for number, batch in enumerate(dataset.iter(batch_size=ROWS_PER_BATCH)):
        for index, value in enumerate(batch[cfg.text_column]):
            where = f"row {number * ROWS_PER_BATCH + index + 1} of {cfg.path!r} {split}"
            yield from row_pieces(text_of(value, cfg.text_column, where))


def _load_hub(cfg: DataConfig, split: str):
    """The split as a `datasets.Dataset`, or an `IterableDataset` with `data.streaming`."""
    import datasets

    try:
        return datasets.load_dataset(cfg.path, cfg.name, split=split, streaming=cfg.streaming)
    except (FileNotFoundError, ValueError) as err:
        raise UserError(f"data.path={cfg.path!r}: {' '.join(str(err).split())}") from None
    except (ConnectionError, OSError) as err:
        raise UserError(f"data.path={cfg.path!r} is neither local files nor a dataset reachable on the Hugging "
                        f"Face hub ({' '.join(str(err).split()[:30])})") from None


def _source_identity(cfg: DataConfig, split: str, files: list[Path]) -> dict:
    """What the token file depends on: the dataset (local files by name, size and time), the split,
    the column, the separator, the encoding and the file's format."""
    stats = [(f, f.stat()) for f in files]
    dataset = [(str(f.resolve()), s.st_size, s.st_mtime_ns) for f, s in stats] if files else [cfg.path, cfg.name]
    return {"dataset": dataset, "split": split, "column": cfg.text_column, "separator": cfg.separator,
            "encoding": get_encoding().name, "format": 2}
