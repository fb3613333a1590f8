"""Train once per training config within a sweep: a model store keyed by a hash of the
training settings, with a lock file so that parallel jobs never train the same model twice.

A store entry is ``<root>/<key>/``: ``lock`` (held by the job that trains), then
``checkpoint.pt``, ``metrics.jsonl``, ``loss.png`` and last ``trained.json`` (the owner and
its summary), whose presence means "ready".
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gpt2exp.atomic import link_atomic, process_alive, write_json_atomic
from gpt2exp.config import config_hash
from gpt2exp.run_folder import RunLayout
from gpt2exp.tracking import read_jsonl

NOT_TRAINING = ("decoding", "logger")
READY_FILE = "trained.json"
ARTIFACTS = ("checkpoint.pt", "metrics.jsonl", "loss.png")


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
    it and then `publish` its files."""

    def __init__(self, folder: Path, key: str, owner: dict, trained: TrainedModel | None):
        self.folder, self.key, self.owner, self.trained = folder, key, owner, trained
        self.published = False

    def publish(self, *, checkpoint: Path, metrics: Path, loss_plot: Path, summary: dict) -> None:
        for source, name in zip((checkpoint, metrics, loss_plot), ARTIFACTS):
            link_atomic(source, self.folder / name)
        write_json_atomic(self.folder / READY_FILE, {"key": self.key, "owner": self.owner, "summary": summary})
        self.published = True


@contextlib.contextmanager
def claim(root: str | Path, key: str, owner: dict, poll_s: float = 1.0) -> Iterator[Slot]:
    """Wait until the model for `key` is ready (reuse it) or this process holds its lock (train it).

    A job that held the lock and leaves without publishing (it failed) releases the lock, so a
    waiting job trains in its place; a lock whose process died on this host is broken.
    """
    folder = Path(root) / key
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / "lock"
    while True:
        trained = _ready(folder, key)
        if trained:
            yield Slot(folder, key, owner, trained)
            return
        if _try_lock(lock, owner):
            break
        if _holder_is_dead(lock):
            lock.unlink(missing_ok=True)
            continue
        time.sleep(poll_s)
    slot = Slot(folder, key, owner, None)
    try:
        yield slot
    finally:
        if not slot.published:
            lock.unlink(missing_ok=True)


def adopt(trained: TrainedModel, run_dir: Path, tracker) -> dict:
    """Make `run_dir` a complete folder of the trained model: its training metrics logged again
    through `tracker` (metrics.jsonl and W&B history), its checkpoint and loss plot linked in
    (checkpoints/last.pt, loss.png). Returns its summary plus `reused_from` (job, run folder).
    The figures of the trainer's own samples (gen/*) stay behind: this job samples its own."""
    for metrics in read_jsonl(trained.metrics):
        step = metrics.pop("step")
        if training := {key: value for key, value in metrics.items() if not key.startswith("gen/")}:
            tracker.log_metrics(training, step=step)
    link_atomic(trained.checkpoint, run_dir / RunLayout.CHECKPOINTS / "last.pt")
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


def _try_lock(lock: Path, owner: dict) -> bool:
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), **owner}, f)
    return True


def _holder_is_dead(lock: Path) -> bool:
    try:
        holder = json.loads(lock.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return False  # gone (try again) or being written
    return holder.get("host") == socket.gethostname() and not process_alive(holder["pid"])
