"""Corpora -> token arrays (cached) -> batches of the tutorial's sliding windows."""

from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import DataLoader

from gpt2exp.data.cache import cached_tokens, tokenize
from gpt2exp.data.loaders import EpochSampler, SlidingWindowDataset, create_dataloader, epoch_batches, eval_batches
from gpt2exp.data.sources import (
    EVAL_SPLITS,
    SOURCES,
    WIKITEXT_NAMES,
    Splits,
    load_eval_text,
    load_splits,
    pydocs_documents,
)
from gpt2exp.errors import UserError

__all__ = [
    "EVAL_SPLITS", "SOURCES", "WIKITEXT_NAMES", "DataBundle", "EpochSampler", "SlidingWindowDataset", "Splits", "build_data",
    "cached_tokens", "create_dataloader", "epoch_batches", "eval_batches", "load_eval_text", "load_splits", "pydocs_documents", "tokenize",
]


@dataclass
class DataBundle:
    """The loaders of one run and the number of tokens in each split."""

    train_loader: DataLoader
    val_loader: DataLoader
    train_tokens: int
    val_tokens: int


def build_data(
    *,
    source: str,
    path: str | None = None,
    name: str = "wikitext-2-raw-v1",
    local_dir: str | None = None,
    train_ratio: float = 0.8,
    batch_size: int,
    context_length: int,
    stride: int,
    cache_dir: str | Path,
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int = 0,
    seed: int = 0,
    sampler: str = "windows",
    pin_memory: bool = False,
) -> DataBundle:
    """Load a corpus, tokenize it (cached in `cache_dir`) and wrap both splits in loaders.

    The train loader draws its windows with `sampler` (see `create_dataloader`); the val loader
    takes the sliding windows in order and keeps its last, partial batch. Raises UserError, naming the
    config key, when a setting is out of range or a split is too short for one window.
    """
    at_least_one = {"data.batch_size": batch_size, "data.stride": stride, "model.context_length": context_length}
    for key, value in at_least_one.items():
        if value < 1:
            raise UserError(f"{key}={value} must be >= 1")
    splits = load_splits(source, path=path, name=name, local_dir=local_dir, train_ratio=train_ratio)
    try:
        train_tokens = cached_tokens(splits.train, cache_dir=cache_dir, label=f"{source}-train")
        val_tokens = cached_tokens(splits.val, cache_dir=cache_dir, label=f"{source}-val")
    except OSError as err:
        raise UserError(f"data.cache_dir: cannot keep the token cache in '{cache_dir}' ({err.strerror or err})") from None
    ratio_hint = {"train": "a larger data.train_ratio, ", "val": "a smaller data.train_ratio, "}
    for split, tokens in (("train", train_tokens), ("val", val_tokens)):
        if len(tokens) < context_length + 1:
            hint = "" if source == "wikitext" else ratio_hint[split]
            raise UserError(
                f"data: the {split} split has {len(tokens)} tokens, fewer than one window "
                f"(model.context_length + 1 = {context_length + 1}); use a longer text, {hint}"
                "or a smaller model.context_length"
            )
    train_loader = create_dataloader(
        train_tokens, batch_size=batch_size, context_length=context_length, stride=stride,
        shuffle=shuffle, drop_last=drop_last, num_workers=num_workers, seed=seed, sampler=sampler,
        pin_memory=pin_memory,
    )
    if len(train_loader) == 0:
        raise UserError(
            f"data: the train split gives {len(train_loader.sampler)} windows, fewer than one batch of "
            f"data.batch_size={batch_size}; use a smaller data.batch_size or data.stride, or a longer text"
        )
    val_loader = create_dataloader(
        val_tokens, batch_size=batch_size, context_length=context_length, stride=stride,
        shuffle=False, drop_last=False, num_workers=num_workers, seed=seed, pin_memory=pin_memory,
    )
    return DataBundle(train_loader, val_loader, len(train_tokens), len(val_tokens))
