"""Checkpoints: written atomically, read back with `torch.load(weights_only=True)` only."""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import torch

from gpt2exp.errors import UserError

FORMAT = "gpt2exp-checkpoint"
VERSION = 1


def save_checkpoint(
    path: str | Path,
    *,
    model_state: dict,
    optimizer_state: dict | None,
    step: int,
    config: dict,
    extra: dict | None = None,
) -> Path:
    """Writes the checkpoint so that `path` holds either the old file or the whole new one, never a part.

    `config` and `extra` must be plain data (dicts, lists, str, numbers, bool, None) or tensors.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model": model_state,
        "optimizer": optimizer_state,
        "step": step,
        "config": config,
        "extra": extra or {},
    }
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """The checkpoint's dict: "format", "version", "model", "optimizer", "step", "config", "extra".

    Raises UserError for a missing, unreadable, corrupt or foreign file; never runs pickled code.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ckpt: '{path}' does not exist or is not a file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"ckpt: '{path}' is not a gpt2exp checkpoint") from None
    except (RuntimeError, EOFError):
        raise UserError(f"ckpt: '{path}' is corrupt or truncated") from None
    except OSError as e:
        raise UserError(f"ckpt: '{path}' cannot be read ({e.strerror})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"ckpt: '{path}' is not a gpt2exp checkpoint")
    if payload.get("version") != VERSION:
        version = payload.get("version")
        raise UserError(f"ckpt: '{path}' has format version {version!r}; this gpt2exp reads {VERSION}")
    return payload
