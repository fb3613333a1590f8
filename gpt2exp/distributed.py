"""Data-parallel training on PyTorch's own engine. ``torchrun`` (or submitit's SLURM tasks,
translated) describes the job in RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT; the process group runs gloo for CPU
tensors and, where CUDA and NCCL are present, NCCL for CUDA ones. Rank 0 owns the run folder,
the console, W&B, samples and checkpoints; every helper here is a no-op in a single process."""

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from gpt2exp.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def world() -> World:
    """From torchrun's environment (a single process without it)."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def _from_submitit() -> None:
    """A task of a multi-task submitit job (``hydra/launcher=slurm`` or ``submitit_local`` with
    tasks_per_node > 1): torchrun's variables from SLURM's (the first node as the rendezvous)."""
    if "RANK" in os.environ or "SUBMITIT_EXECUTOR" not in os.environ:
        return
    from submitit.helpers import TorchDistributedEnvironment

    if TorchDistributedEnvironment().world_size > 1:
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def start() -> World:
    """Join the job's process group (when there is more than one process) and agree on the
    launch time, so that every rank names the same run folder (`config.launch_time`); returns
    this process's place."""
    _from_submitit()
    place = world()
    if place.distributed and not dist.is_initialized():
        cuda = torch.cuda.is_available() and dist.is_nccl_available()
        if cuda:
            torch.cuda.set_device(place.local_rank)
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo")
        os.environ["GPT2EXP_LAUNCH_TIME"] = broadcast(datetime.datetime.now().isoformat())
    return place


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def broadcast(value):
    """Rank 0's `value` on every rank (any picklable object)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def main_decides(decide: Callable[[], T]) -> T:
    """Rank 0's ``decide()``, on every rank; a UserError it raises is raised on every rank (each
    then exits 2 with the same line, instead of waiting on a rank that is gone)."""
    if not active():
        return decide()
    return _tell(decide) if world().main else _told()


def main_first(run: Callable[[], T]) -> T:
    """``run()`` on rank 0, then on the other ranks (to read what rank 0 cached); a UserError on
    rank 0 is raised on every rank. Only the outcome travels, never the result."""
    if not active():
        return run()
    if world().main:
        result = []
        _tell(lambda: result.append(run()))
        return result[0]
    _told()
    return run()


def _tell(decide: Callable[[], T]) -> T:
    """Rank 0: ``decide()``, and its value or its UserError to the other ranks."""
    try:
        value = decide()
    except UserError as err:
        broadcast(("error", str(err)))
        raise
    broadcast(("ok", value))
    return value


def _told():
    """The other ranks: rank 0's value, or its UserError raised here."""
    outcome, value = broadcast(None)
    if outcome == "error":
        raise UserError(value)
    return value


def all_sum(values: list[float]) -> list[float]:
    """The element-wise sum over ranks (in float64, on the CPU)."""
    if not active():
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def mean(value: float) -> float:
    """The mean of `value` over ranks."""
    return all_sum([value])[0] / dist.get_world_size() if active() else value


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on one (a stop request seen by one rank stops all)."""
    return all_sum([float(flag)])[0] > 0


def stop() -> None:
    if active():
        dist.destroy_process_group()
