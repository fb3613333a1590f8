"""Data-parallel training on PyTorch's own engine. ``torchrun`` (or submitit's SLURM tasks,
translated) describes the job in RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT; the process group runs gloo for CPU
tensors and, where CUDA and NCCL are present, NCCL for CUDA ones. Rank 0 owns the run folder,
the console, W&B, samples and checkpoints; every helper here is a no-op in a single process."""

import datetime
import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist

from gpt2exp.errors import UserError

T = TypeVar("T")
S = TypeVar("S")
RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT")  # where the processes of a job meet (torchrun sets them)
# How long the other ranks wait for rank 0 to prepare what they then read (`main_first`): a
# corpus to tokenize takes hours where the process group's own timeout is 30 minutes (NCCL's 10).
PREPARE_TIMEOUT = datetime.timedelta(hours=24)


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
    """From torchrun's environment: RANK, a WORLD_SIZE over 1 and the rendezvous variables. A
    single process without them, and a warning when RANK or WORLD_SIZE alone were set (a wrapper
    script's or a container's), which would otherwise make it a replica that saves nothing."""
    env = os.environ
    place = _described_job()
    stray = " ".join(f"{key}={env[key]}" for key, alone in (("RANK", "0"), ("WORLD_SIZE", "1")) if env.get(key, alone) != alone)
    if place is None and stray:
        _warn_not_a_job(stray)
    return place or World()


def _described_job() -> World | None:
    """This process's place when the environment describes a job of several processes."""
    env = os.environ
    try:
        place = World(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    except (KeyError, ValueError):
        return None
    return place if place.distributed and all(env.get(key) for key in RENDEZVOUS) else None


@functools.cache
def _warn_not_a_job(stray: str) -> None:
    print(f"warning: {stray} is set, but no distributed job around it (WORLD_SIZE > 1, {' and '.join(RENDEZVOUS)}, "
          "as torchrun sets them): running as a single process", file=sys.stderr, flush=True)


def launch_command() -> list[str] | None:
    """Under torchrun, rank 0's launcher command line up to the training module or script, as
    it was typed: torchrun's own (its /proc entry, which ends with this process's arguments),
    else rebuilt from torchrun's variables. None outside torchrun."""
    env = os.environ
    if "TORCHELASTIC_RUN_ID" not in env:
        return None
    script_args = sys.argv[1:]
    try:
        launched = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode().split("\0")[:-1]
    except (OSError, UnicodeDecodeError):
        launched = []
    cut = len(launched) - len(script_args)
    if cut > 0 and launched[cut:] == script_args:
        prefix = launched[:cut]
        return prefix[1:] if len(prefix) > 1 and Path(prefix[1]).name == "torchrun" else prefix
    nodes = int(env.get("GROUP_WORLD_SIZE", 1))
    return ["torchrun", *([f"--nnodes={nodes}"] if nodes > 1 else []),
            f"--nproc_per_node={env.get('LOCAL_WORLD_SIZE', 1)}", "-m", "gpt2exp.train"]


def _from_submitit() -> None:
    """A task of a multi-task submitit job (``hydra/launcher=slurm`` or ``submitit_local`` with
    tasks_per_node > 1): torchrun's variables from SLURM's (the first node as the rendezvous)."""
    if _described_job() or "SUBMITIT_EXECUTOR" not in os.environ:
        return
    # The optional `sweeps` extra's, so imported here, in its tasks only.
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


def broadcast(value, group=None):
    """Rank 0's `value` on every rank (any picklable object)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


@functools.cache
def _patient_group():
    """A gloo group of every rank whose operations wait `PREPARE_TIMEOUT` (made by every rank
    at its first `main_first`)."""
    return dist.new_group(backend="gloo", timeout=PREPARE_TIMEOUT)


def main_decides(decide: Callable[[], T]) -> T:
    """Rank 0's ``decide()``, on every rank; a UserError it raises is raised on every rank (each
    then exits 2 with the same line, instead of waiting on a rank that is gone)."""
    if not active():
        return decide()
    return _tell(decide, _itself) if world().main else _told()


def main_shares(decide: Callable[[], T], share: Callable[[T], S]) -> T | S:
    """Rank 0's ``decide()`` on rank 0; the other ranks get ``share`` of it instead (what they
    need of a value too large to send, or None); a UserError it raises is raised on every rank."""
    if not active():
        return decide()
    return _tell(decide, share) if world().main else _told()


def main_first(run: Callable[[], T]) -> T:
    """``run()`` on rank 0, then on the other ranks (to read what rank 0 cached); a UserError on
    rank 0 is raised on every rank. Only the outcome travels, never the result. The other ranks
    wait up to `PREPARE_TIMEOUT` (tokenizing a corpus), not the process group's timeout."""
    if not active():
        return run()
    if world().main:
        return _tell(run, _nothing, _patient_group())
    _told(_patient_group())
    return run()


def _itself(value: T) -> T:
    return value


def _nothing(value: object) -> None:
    return None


def _tell(decide: Callable[[], T], share: Callable[[T], object], group=None) -> T:
    """Rank 0: ``decide()``, and ``share`` of its value, or its UserError, to the other ranks."""
    try:
        value = decide()
    except UserError as err:
        broadcast(("error", str(err)), group)
        raise
    broadcast(("ok", share(value)), group)
    return value


def _told(group=None):
    """The other ranks: rank 0's value, or its UserError raised here."""
    outcome, value = broadcast(None, group)
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
        _patient_group.cache_clear()
        dist.destroy_process_group()
