"""Corpora larger than memory: a Hugging Face hub dataset (through ``datasets``: downloaded, or
streamed) or local parquet / json lines / csv / text files (read in place), a batch of rows at a
time, tokenized by tiktoken's threads and written straight into a uint16 token file that training
memory-maps. Nothing holds the whole text, nor all its tokens."""

import hashlib
import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from gpt2exp.atomic import write_atomic
from gpt2exp.config import DataConfig
from gpt2exp.errors import UserError
from gpt2exp.tokenizer import get_encoding

BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".txt": "text"}  # json: lines
ROWS_PER_BATCH = 1024


def split_tokens(cfg: DataConfig, cache_dir: Path) -> tuple[np.memmap, np.memmap]:
    """(train, val) token ids: `data.split_train` and `data.split_val` of a hub dataset, or, for
    local files (or `split_val: null`), the first `train_ratio` of the tokens and the rest."""
    files = _local_files(cfg.path)
    train = token_file(cfg, "train" if files else cfg.split_train, cache_dir, files)
    if cfg.split_val and not files:
        return train, token_file(cfg, cfg.split_val, cache_dir, files)
    cut = int(len(train) * cfg.train_ratio)
    return train[:cut], train[cut:]


def token_file(cfg: DataConfig, split: str, cache_dir: Path, files: list[Path]) -> np.memmap:
    """The token ids of `split` of `cfg`'s dataset (`files`, or the hub dataset when there are
    none), rows joined by `cfg.separator`, as a read-only uint16 memmap:
    `cache_dir/hf-<split>-<hash>.bin`, tokenized only on a miss, written atomically."""
    source = _source_identity(cfg, split, files)
    digest = hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / f"hf-{split}-{digest}.bin"
    if not path.is_file():
        rows = _rows(cfg, split, files)
        write_atomic(path, lambda file: tokenize_rows(rows, cfg.text_column, cfg.separator, file,
                                                      label=f"tokenizing {cfg.path} {split}"))
    if path.stat().st_size == 0:
        raise UserError(f"data.path: split {split!r} of {cfg.path!r} holds no text in column {cfg.text_column!r}")
    return np.memmap(path, dtype=np.uint16, mode="r")


def tokenize_rows(rows: Iterator[list[str]], column: str, separator: str, file, *, label: str = "tokenizing",
                  threads: int | None = None) -> int:
    """Write the GPT-2 ids of every row (each batch a list of texts), `separator` after each, to
    `file` as uint16; returns the number of tokens. tiktoken encodes a batch on `threads` threads."""
    from tqdm.auto import tqdm

    encoding = get_encoding()
    after = encoding.encode(separator, allowed_special="all")
    threads = threads or os.cpu_count() or 1
    count = 0
    with tqdm(desc=label, unit="rows", unit_scale=True, disable=None) as bar:
        for texts in rows:
            ids = encoding.encode_ordinary_batch(texts, num_threads=threads)
            flat = np.array(list(itertools.chain.from_iterable(row + after for row in ids)), dtype=np.uint16)
            file.write(flat.tobytes())
            count += len(flat)
            bar.update(len(texts))
    return count


def _rows(cfg: DataConfig, split: str, files: list[Path]) -> Iterator[list[str]]:
    """Batches of `cfg.text_column` texts of `split`: local `files` read in place a batch at a time
    (pyarrow for parquet and csv, line by line for json lines and text), else the hub dataset
    through `datasets`."""
    batches = _local_rows(files, cfg.text_column) if files else _hub_rows(cfg, split)
    for batch in batches:
        yield [text for text in batch if text]


def _local_rows(files: list[Path], column: str) -> Iterator[list]:
    for file in files:
        kind = BUILDERS[file.suffix]
        if kind == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            # The system allocator gives each batch's memory back (mimalloc, pyarrow's default,
            # keeps it, and the process grows with the file); no read-ahead of whole row groups.
            pa.set_memory_pool(pa.system_memory_pool())
            parquet = pq.ParquetFile(file, pre_buffer=False, buffer_size=1 << 20)
            _check_column(column, parquet.schema_arrow.names, file)
            for batch in parquet.iter_batches(batch_size=ROWS_PER_BATCH, columns=[column], use_threads=False):
                yield batch.column(0).to_pylist()
        elif kind == "csv":
            import pyarrow.csv

            reader = pyarrow.csv.open_csv(file)
            _check_column(column, reader.schema.names, file)
            for batch in reader:
                yield batch.column(column).to_pylist()
        else:
            with file.open(encoding="utf-8") as lines:
                while batch := list(itertools.islice(lines, ROWS_PER_BATCH)):
                    yield [line.rstrip("\n") for line in batch] if kind == "text" else [
                        _json_text(line, column, file) for line in batch if line.strip()]


def _json_text(line: str, column: str, file: Path) -> str:
    row = json.loads(line)
    _check_column(column, list(row), file)
    return row[column]


def _hub_rows(cfg: DataConfig, split: str) -> Iterator[list]:
    import datasets

    dataset = _load_hub(cfg, split)
    if dataset.column_names is not None:
        _check_column(cfg.text_column, dataset.column_names, cfg.path)
    if isinstance(dataset, datasets.Dataset):
        dataset = dataset.select_columns([cfg.text_column])
    for batch in dataset.iter(batch_size=ROWS_PER_BATCH):
        yield batch[cfg.text_column]


def _check_column(column: str, columns: list[str], source) -> None:
    if column not in columns:
        raise UserError(f"data.text_column={column!r} is not a column of '{source}' (its columns: {', '.join(columns)})")


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


def _local_files(path: str) -> list[Path]:
    """The data files `path` names (a file, or a folder's files of one supported kind), else []
    (then it names a hub dataset)."""
    given = Path(path).expanduser()
    if given.is_file():
        files = [given]
    elif given.is_dir():
        files = sorted(f for f in given.rglob("*") if f.suffix in BUILDERS and f.is_file())
        if not files:
            raise UserError(f"data.path: no {', '.join(BUILDERS)} files in folder {path!r}")
    else:
        return []
    kinds = {BUILDERS.get(f.suffix) for f in files}
    if None in kinds or len(kinds) > 1:
        raise UserError(f"data.path: {path!r} must hold files of one kind: {', '.join(BUILDERS)}")
    return files


def _source_identity(cfg: DataConfig, split: str, files: list[Path]) -> dict:
    """What the token file depends on: the dataset (local files by name, size and time), the split,
    the column, the separator and the encoding."""
    stats = [(f, f.stat()) for f in files]
    dataset = [(str(f.resolve()), s.st_size, s.st_mtime_ns) for f, s in stats] if files else [cfg.path, cfg.name]
    return {"dataset": dataset, "split": split, "column": cfg.text_column, "separator": cfg.separator,
            "encoding": get_encoding().name}
