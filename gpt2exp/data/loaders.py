"""Token ids -> (inputs, targets) batches: the tutorial's sliding windows, or windows at random offsets."""

from collections.abc import Iterator
from typing import cast

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler


class SlidingWindowDataset(Dataset):
    """The tutorial's GPTDatasetV1 without materialising windows.

    Windows start every `stride` tokens (while a full window and its next token fit);
    item i is (inputs, targets), two int64 tensors of shape [context_length], where
    targets are the inputs shifted one token to the right.
    """

    def __init__(self, tokens: np.ndarray, context_length: int, stride: int):
        self.tokens = tokens
        self.context_length = context_length
        self.starts = range(0, len(tokens) - context_length, stride)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        start = self.starts[index]
        window = torch.from_numpy(self.tokens[start : start + self.context_length + 1].astype(np.int64))
        return window[:-1], window[1:]


class EpochSampler(Sampler[int]):
    """Window indices of one epoch: a permutation fixed by (`seed`, epoch) when shuffling, else
    in order. `set_epoch(epoch, start)` picks the epoch and skips its first `start` indices, so a
    resumed run sees exactly the windows the interrupted one had left, without loading the others.

    In a job of `world_size` processes, rank r takes every world_size-th index from the r-th on
    (the tail that does not divide evenly is dropped): the ranks' i-th batches together hold the
    windows of a single process's i-th batch world_size times as large."""

    def __init__(self, length: int, *, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1):
        self.length, self.shuffle, self.seed = length, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _rank_indices(self, epoch: int) -> Tensor:
        end = self.length // self.world_size * self.world_size
        if not self.shuffle:
            return torch.arange(self.rank, end, self.world_size)
        return torch.randperm(self.length, generator=_epoch_generator(self.seed, epoch))[self.rank : end : self.world_size]

    def order(self, epoch: int) -> list[int]:
        """This rank's indices of `epoch`."""
        return list(self._iter_from(epoch, 0))

    def _iter_from(self, epoch: int, start: int) -> Iterator[int]:
        indices = self._rank_indices(epoch)[start:]
        for first in range(0, len(indices), _CHUNK):  # as Python ints a chunk at a time
            yield from indices[first : first + _CHUNK].tolist()

    def __iter__(self) -> Iterator[int]:
        return self._iter_from(self.epoch, self.start)

    def __len__(self) -> int:
        return max(0, self.length // self.world_size - self.start)


class RandomOffsetSampler(EpochSampler):
    """`samples` window indices per epoch drawn uniformly, with replacement, from `0..offsets-1`;
    fixed by (`seed`, epoch), resumable and dealt to ranks like `EpochSampler`. Drawn a chunk at a
    time, so that an epoch of a corpus of billions of tokens never sits in memory."""

    def __init__(self, offsets: int, *, samples: int, seed: int, rank: int = 0, world_size: int = 1):
        super().__init__(samples, shuffle=True, seed=seed, rank=rank, world_size=world_size)
        self.offsets = offsets

    def _iter_from(self, epoch: int, start: int) -> Iterator[int]:
        end = self.length // self.world_size * self.world_size
        job_index = self.rank + start * self.world_size  # this rank's next index in the job's order
        while job_index < end:
            chunk = job_index // _CHUNK
            size = min(_CHUNK, self.length - chunk * _CHUNK)
            offsets = torch.randint(self.offsets, (size,), generator=_epoch_generator(self.seed, epoch, chunk))
            stop = min(end, chunk * _CHUNK + size)
            yield from offsets[job_index - chunk * _CHUNK : stop - chunk * _CHUNK : self.world_size].tolist()
            job_index += -(-(stop - job_index) // self.world_size) * self.world_size


_CHUNK = 1 << 20


def _epoch_generator(seed: int, epoch: int, *chunk: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch, *chunk]).generate_state(1)[0]))


def epoch_batches(loader: DataLoader, epoch: int, skip_batches: int = 0) -> Iterator:
    """The loader's batches of `epoch`, from batch `skip_batches` on (the loader's sampler must be
    an `EpochSampler`)."""
    sampler = cast(EpochSampler, loader.sampler)
    sampler.set_epoch(epoch, start=skip_batches * cast(int, loader.batch_size))
    return iter(loader)


def create_dataloader(
    tokens: np.ndarray,
    *,
    batch_size: int,
    context_length: int,
    stride: int,
    shuffle: bool,
    drop_last: bool,
    num_workers: int = 0,
    seed: int = 0,
    sampler: str = "windows",
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """Batches of windows over `tokens`; each epoch's order is fixed by `seed` and the epoch.

    sampler "windows": the sliding windows, every `stride` tokens, shuffled or in order (see
    `EpochSampler`). sampler "random": as many windows per epoch, each at an offset drawn
    uniformly from every offset where a window fits (see `RandomOffsetSampler`). The loader's
    own generator (worker seeds) keeps it off torch's global RNG; `pin_memory` speeds up
    copies to CUDA. `rank` and `world_size` deal each epoch's windows to a job's processes.
    """
    windows = SlidingWindowDataset(tokens, context_length, stride)
    if sampler == "windows":
        dataset, order = windows, EpochSampler(len(windows), shuffle=shuffle, seed=seed, rank=rank,
                                               world_size=world_size)
    else:
        dataset = SlidingWindowDataset(tokens, context_length, stride=1)
        order = RandomOffsetSampler(len(dataset), samples=len(windows), seed=seed, rank=rank, world_size=world_size)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=order,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
    )


def eval_batches(dataset: SlidingWindowDataset, *, num_batches: int, batch_size: int) -> list[tuple[Tensor, Tensor]]:
    """A fixed set of `num_batches` batches whose windows are spread evenly over the split.

    When the split has no more windows than that, all of them are used (so fewer batches).
    """
    wanted = num_batches * batch_size
    if len(dataset) <= wanted:
        indices = list(range(len(dataset)))
    else:
        indices = np.linspace(0, len(dataset) - 1, wanted).round().astype(int).tolist()
    batches = []
    for first in range(0, len(indices), batch_size):
        inputs, targets = zip(*(dataset[index] for index in indices[first : first + batch_size]))
        batches.append((torch.stack(inputs), torch.stack(targets)))
    return batches
