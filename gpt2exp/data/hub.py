"""`data=hf`: a Hugging Face hub dataset (through ``datasets``: downloaded, or streamed) or local
parquet / json / csv / text files (read in place, see `data.files`), as the rows of a token file
(see `data.token_files`): corpora larger than memory, a bounded batch of text at a time."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from gpt2exp.config import DataConfig
from gpt2exp.data.files import ROWS_PER_BATCH, Piece, check_column, data_files, read_pieces, row_pieces, text_of
from gpt2exp.data.token_files import TokenSource, token_file
from gpt2exp.errors import UserError


def split_tokens(cfg: DataConfig, cache_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) token ids, read-only memmaps: `data.split_train` and `data.split_val` of a hub
    dataset, or, for local files (or `split_val: null`), the first `train_ratio` of the tokens
    and the rest."""
    files = data_files(data_path(cfg))
    train = token_file(_source(cfg, "train" if files else cfg.split_train, files), cache_dir)
    if cfg.split_val and not files:
        return train, token_file(_source(cfg, cfg.split_val, files), cache_dir)
    cut = int(len(train) * cfg.train_ratio)
    return train[:cut], train[cut:]


def eval_text(cfg: DataConfig, split: str) -> str:
    """The text `gpt2exp.eval` scores: local files whole (they have no splits), else the hub
    dataset's `split` ("valid": `data.split_val`; "test": its "test" split), rows joined by
    `data.separator` as in the token file."""
    files = data_files(data_path(cfg))
    if not files:
        hub_split = cfg.split_val if split == "valid" else "test"
        if hub_split is None:
            raise UserError("eval.split=valid: data.split_val is null, so the dataset has no validation split")
        pieces = _hub_pieces(cfg, hub_split)
    else:
        pieces = read_pieces(files, cfg.text_column)
    return "".join(text + cfg.separator if row_ends else text for text, row_ends in pieces)


def data_path(cfg: DataConfig) -> str:
    """`data.path`, which DataConfig requires of data=hf and data=text."""
    assert cfg.path is not None, cfg.source
    return cfg.path


def _source(cfg: DataConfig, split: str, files: list[Path]) -> TokenSource:
    """`split` of `cfg`'s dataset (`files`, or the hub dataset when there are none) as a token file's rows."""
    return TokenSource(
        label=f"hf-{split}", identity=_identity(cfg, split, files),
        rows=lambda: read_pieces(files, cfg.text_column) if files else _hub_pieces(cfg, split),
        separator=cfg.separator, files=tuple(files), progress=f"tokenizing {cfg.path} {split}",
        if_empty=f"data.path: split {split!r} of {cfg.path!r} holds no text in column {cfg.text_column!r}")


def _hub_pieces(cfg: DataConfig, split: str) -> Iterator[Piece]:
    import datasets  # slow to import, and only a hub dataset needs it

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
    import datasets  # as in _hub_pieces

    try:
        return datasets.load_dataset(cfg.path, cfg.name, split=split, streaming=cfg.streaming)
    except (FileNotFoundError, ValueError) as err:
        raise UserError(f"data.path={cfg.path!r}: {' '.join(str(err).split())}") from None
    except (ConnectionError, OSError) as err:
        raise UserError(f"data.path={cfg.path!r} is neither local files nor a dataset reachable on the Hugging "
                        f"Face hub ({' '.join(str(err).split()[:30])})") from None


def _identity(cfg: DataConfig, split: str, files: list[Path]) -> dict:
    """What the rows depend on: the dataset (local files by name, size and time), the split, the
    column and the token file's format."""
    stats = [(f, f.stat()) for f in files]
    dataset = [(str(f.resolve()), s.st_size, s.st_mtime_ns) for f, s in stats] if files else [cfg.path, cfg.name]
    return {"dataset": dataset, "split": split, "column": cfg.text_column, "format": 2}
