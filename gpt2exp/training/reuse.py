"""Train once per training config within a sweep: a model store keyed by a hash of the
training settings, with a lock file so that parallel jobs never train the same model twice.

A store entry is ``<root>/<key>/``: ``lock`` (a `gpt2exp.locks` lock that the job that trains
holds: the kernel releases it when that job ends, however it ends; the file names the job),
then ``checkpoint.pt``, ``metrics.jsonl``, ``loss.png`` and last ``trained.json`` (the owner and
its summary), whose presence means "ready".
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gpt2exp.atomic import link_atomic, write_json_atomic
from gpt2exp.errors import UserError
from gpt2exp.locks import HeldLock, NotALockFile, holder_of, try_lock
from gpt2exp.runs.jsonl import read_jsonl
from gpt2exp.runs.layout import RunLayout
from gpt2exp.training.fingerprint import config_hash

NOT_TRAINING = ("decoding", "logger", "trainer.reuse_wait_minutes")
READY_FILE = "trained.json"
ARTIFACTS = ("checkpoint.pt", "metrics.jsonl", "loss.png")

log = logging.getLogger(__name__)


def training_key(resolved_config: dict) -> str:
    """A short hash of everything in the resolved config that changes the trained model."""
    return config_hash(resolved_config, NOT_TRAINING)[:16]


@dataclass
class TrainedModel:
    """A published model: its files in the store and who trained it."""

    key: str
    folder: Path
    owner: dict
    summary: dict

    @property
    def checkpoint(self) -> Path:
        return self.folder / "checkpoint.pt"

    @property
    def metrics(self) -> Path:
        return self.folder / "metrics.jsonl"

    @property
    def loss_plot(self) -> Path:
        return self.folder / "loss.png"


class Slot:
    """What `claim` yields: `trained` is the model to reuse, or None when this job must train
    it and then `publish` its files (which does nothing for a job that trains its own copy, `shared`
    false, because another job held the lock past the wait)."""

    def __init__(self, folder: Path, key: str, owner: dict, trained: TrainedModel | None, shared: bool = True):
        self.folder, self.key, self.owner, self.trained, self.shared = folder, key, owner, trained, shared
        self.published = False

    def publish(self, *, checkpoint: Path, metrics: Path, loss_plot: Path, summary: dict) -> None:
        if not self.shared:
            return
        for source, name in zip((checkpoint, metrics, loss_plot), ARTIFACTS):
            link_atomic(source, self.folder / name)
        write_json_atomic(self.folder / READY_FILE, {"key": self.key, "owner": self.owner, "summary": summary})
        self.published = True


@contextlib.contextmanager
def claim(root: str | Path, key: str, owner: dict, *, wait_minutes: float, poll_s: float = 1.0) -> Iterator[Slot]:
    """The model for `key` when it is ready (reuse it), else this job's lock on it (train it).

    While another job holds the lock (it trains the model), say who and wait up to `wait_minutes`
    for its model; after that, train this job's own copy (not published). A job that leaves
    without publishing (it failed, or was killed) releases the lock, and a waiting job trains.
    A store where no lock can be taken (a file system without flock) is a UserError: a waiter
    there could not tell a live holder from a dead one.
    """
    folder = Path(root) / key
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / "lock"
    if trained := _ready(folder, key):
        yield Slot(folder, key, owner, trained)
        return
    lock = _lock(lock_path, owner)
    if lock is None:
        log.warning("model store: %s is training this job's model (config hash %s); waiting for it up to %g min "
                    "(trainer.reuse_wait_minutes), then this job trains its own. The lock '%s' ends with that "
                    "job: stop it to stop waiting", _holder(lock_path), key, wait_minutes, lock_path)
        lock = _lock(lock_path, owner, timeout_s=60 * wait_minutes, poll_s=poll_s,
                     give_up=(folder / READY_FILE).exists)
    if lock is None:
        if trained := _ready(folder, key):
            yield Slot(folder, key, owner, trained)
            return
        log.warning("model store: %s still holds '%s' after %g min (trainer.reuse_wait_minutes): this job "
                    "trains its own model", _holder(lock_path), lock_path, wait_minutes)
        yield Slot(folder, key, owner, None, shared=False)
        return
    try:
        if trained := _ready(folder, key):  # published between the look and the lock
            yield Slot(folder, key, owner, trained)
            return
        yield Slot(folder, key, owner, None)
    finally:
        lock.release()


def adopt(trained: TrainedModel, run_dir: Path, tracker) -> dict:
    """Make `run_dir` a complete folder of the trained model: its training metrics logged again
    through `tracker` (metrics.jsonl and W&B history), its checkpoint and loss plot linked in
    (checkpoints/last.pt, loss.png). Returns its summary plus `reused_from` (job, run folder).
    The figures of the trainer's own samples (gen/*) stay behind: this job samples its own."""
    for metrics in read_jsonl(trained.metrics):
        step = metrics.pop("step")
        if training := {key: value for key, value in metrics.items() if not key.startswith("gen/")}:
            tracker.log_metrics(training, step=step)
    link_atomic(trained.checkpoint, RunLayout.last_checkpoint(run_dir))
    link_atomic(trained.loss_plot, run_dir / RunLayout.LOSS_PLOT)
    tracker.log_image("loss_plot", run_dir / RunLayout.LOSS_PLOT)
    summary = {key: value for key, value in trained.summary.items() if not key.startswith("gen/")}
    return {**summary, "reused_from": {"job": trained.owner["job"], "run_dir": trained.owner["run_dir"]}}


def _ready(folder: Path, key: str) -> TrainedModel | None:
    try:
        record = json.loads((folder / READY_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    return TrainedModel(key=key, folder=folder, owner=record["owner"], summary=record["summary"])


def _lock(path: Path, owner: dict, **wait) -> HeldLock | None:
    try:
        return try_lock(path, owner, **wait)
    except NotALockFile:
        raise UserError(f"model store: '{path}' is not a lock file of its own (a link, or not a regular file); "
                        "remove it if no sweep job uses it") from None
    except OSError as err:
        raise UserError(f"model store: cannot lock '{path}' ({err.strerror}); sweep jobs share a trained model "
                        "only where the file system has file locks (flock): put hydra.sweep.dir on one") from None


def _holder(lock: Path) -> str:
    """Who holds the lock, as its file names them."""
    holder = holder_of(lock) or {}
    try:
        return (f"job {holder['job']} (pid {holder['pid']} on {holder['host']}, since {holder['since']}, "
                f"run folder {holder['run_dir']})")
    except KeyError:
        return "a job that is starting"
