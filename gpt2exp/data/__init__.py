"""Corpora -> token files (see `data.token_files`) -> batches of the tutorial's sliding windows.

The data layer: what a run trains and is scored on. Imports only the leaves at the package's top
(`gpt2exp.config`, `tokenizer`, `atomic`, `errors`, ...) and, below it, `gpt2exp.modeling`."""

from collections.abc import Sized
from dataclasses import dataclass
from typing import cast

from torch.utils.data import DataLoader

from gpt2exp import cache
from gpt2exp.config import DataConfig
from gpt2exp.data.hub import split_tokens
from gpt2exp.data.loaders import EpochSampler, SlidingWindowDataset, create_dataloader, epoch_batches, eval_batches
from gpt2exp.data.sources import Splits, has_test_split, load_eval_text, load_splits, pydocs_documents, whole_files
from gpt2exp.data.token_files import text_source, token_file
from gpt2exp.errors import UserError

__all__ = [
    "DataBundle", "EpochSampler", "SlidingWindowDataset", "Splits", "build_data", "create_dataloader", "epoch_batches",
    "eval_batches", "has_test_split", "load_eval_text", "load_splits", "pydocs_documents", "whole_files",
]


@dataclass
class DataBundle:
    """The loaders of one run and the number of tokens in each split."""

    train_loader: DataLoader
    val_loader: DataLoader
    train_tokens: int
    val_tokens: int


def build_data(cfg: DataConfig, *, context_length: int, seed: int = 0, pin_memory: bool = False, rank: int = 0,
               world_size: int = 1) -> DataBundle:
    """Load `cfg.source` into a token file per split (kept in `cfg.cache_dir`, see
    `data.token_files`; `hf` datasets batch by batch, see `data.hub`) and wrap both splits in
    loaders of `context_length`-token windows.

    The train loader draws its windows with `cfg.sampler` (see `create_dataloader`); the val loader
    takes the sliding windows in order and keeps its last, partial batch. In a job of `world_size`
    processes, the train loader of `rank` takes its share of each epoch (see `EpochSampler`).
    Raises UserError, naming the config key, when a split is too short for one window or one batch.
    """
    source, batch_size = cfg.source, cfg.batch_size
    cache_dir = cache.folder(cfg.cache_dir)
    stride = cfg.stride or context_length
    try:
        if source == "hf":
            train_tokens, val_tokens = split_tokens(cfg, cache_dir)
        else:
            splits = load_splits(cfg, cache_dir)
            train_tokens = token_file(text_source(splits.train, f"{source}-train"), cache_dir)
            val_tokens = token_file(text_source(splits.val, f"{source}-val"), cache_dir)
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
        shuffle=cfg.shuffle, drop_last=cfg.drop_last, num_workers=cfg.num_workers, seed=seed, sampler=cfg.sampler,
        pin_memory=pin_memory, rank=rank, world_size=world_size,
    )
    if len(train_loader) == 0:
        raise UserError(
            f"data: the train split gives {len(cast(Sized, train_loader.sampler))} windows, fewer than one batch of "
            f"data.batch_size={batch_size}; use a smaller data.batch_size or data.stride, or a longer text"
        )
    val_loader = create_dataloader(
        val_tokens, batch_size=batch_size, context_length=context_length, stride=stride,
        shuffle=False, drop_last=False, num_workers=cfg.num_workers, seed=seed, pin_memory=pin_memory,
    )
    return DataBundle(train_loader, val_loader, len(train_tokens), len(val_tokens))
