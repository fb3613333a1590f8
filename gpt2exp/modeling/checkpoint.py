"""A checkpoint file: written atomically, read back with `torch.load(weights_only=True)` only.

Before each write the disk must have room for the checkpoint, else the write fails at once
with ENOSPC. (A run's rotating step checkpoints: `gpt2exp.training.step_checkpoints`.)
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import warnings
import zipfile
from pathlib import Path

import torch

from gpt2exp.atomic import write_atomic
from gpt2exp.config import ModelConfig, plain
from gpt2exp.errors import UserError

FORMAT = "gpt2exp-checkpoint"
VERSION = 1
_PAYLOAD_TYPES: dict[str, type | tuple[type, ...]] = {
    "model": dict, "optimizer": (dict, type(None)), "step": int, "config": dict, "extra": dict,
}


def save_checkpoint(
    path: str | Path,
    *,
    model: dict,
    optimizer: dict | None,
    step: int,
    config: dict,
    extra: dict | None = None,
) -> Path:
    """Writes the checkpoint so that `path` holds either the old file or the whole new one, never a part.

    `model` and `optimizer` are state dicts, read back under the same keys (see `load_checkpoint`);
    `config` and `extra` must be plain data (dicts, lists, str, numbers, bool, None) or tensors.
    """
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model": model,
        "optimizer": optimizer,
        "step": step,
        "config": config,
        "extra": extra or {},
    }
    _check_free_space(Path(path), _tensor_bytes(payload))
    return write_atomic(path, lambda file: torch.save(payload, file))


def _tensor_bytes(data, seen: set | None = None) -> int:
    """Bytes of the tensors in nested dicts and lists (what dominates a checkpoint's size), a
    storage shared by several tensors (tied weights) counted once, as torch.save writes it."""
    seen = set() if seen is None else seen
    if isinstance(data, torch.Tensor):
        storage = data.untyped_storage()
        if storage.data_ptr() in seen:
            return 0
        seen.add(storage.data_ptr())
        return storage.nbytes()
    if isinstance(data, dict):
        return sum(_tensor_bytes(value, seen) for value in data.values())
    if isinstance(data, (list, tuple)):
        return sum(_tensor_bytes(value, seen) for value in data)
    return 0


def _check_free_space(path: Path, needed: int) -> None:
    """Raise OSError(ENOSPC) naming `path` when its disk has less than `needed` bytes (and a
    margin of 1%) free: failing before the write beats a write that fills the disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path.parent).free
    if free < needed * 1.01:
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: the checkpoint needs {format_bytes(needed)}, "
                      f"{format_bytes(free)} are free", str(path))


def folder_bytes(folder: str | Path) -> int:
    """Bytes the files in `folder` take, each hard-linked file counted once."""
    seen, total = set(), 0
    for path in Path(folder).glob("*"):
        try:
            info = path.stat()
        except OSError:
            continue
        if path.is_file() and (info.st_dev, info.st_ino) not in seen:
            seen.add((info.st_dev, info.st_ino))
            total += info.st_size
    return total


def format_bytes(count: int) -> str:
    """1.2 GB-style sizes (powers of 1000)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """The checkpoint's dict: "format", "version", "model", "optimizer", "step", "config", "extra".

    Raises UserError for a missing, unreadable, corrupt or foreign file; never runs pickled code.
    """
    path = Path(path)
    try:
        is_file = path.is_file()
    except OSError as err:  # e.g. a name too long for the file system
        raise UserError(f"ckpt: '{path}' cannot be read ({err.strerror})") from None
    if not is_file:
        raise UserError(f"ckpt: '{path}' does not exist or is not a file")
    payload = read_torch_file(path, f"ckpt: '{path}'", "a gpt2exp checkpoint", map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"ckpt: '{path}' is not a gpt2exp checkpoint")
    if payload.get("version") != VERSION:
        version = payload.get("version")
        raise UserError(f"ckpt: '{path}' has format version {version!r}; this gpt2exp reads {VERSION}")
    for key, kinds in _PAYLOAD_TYPES.items():
        if not isinstance(payload.get(key), kinds):
            raise UserError(f"ckpt: '{path}' is an incomplete gpt2exp checkpoint (its {key!r} is missing or malformed)")
    if not all(isinstance(name, str) and isinstance(t, torch.Tensor) for name, t in payload["model"].items()):
        raise UserError(f"ckpt: '{path}' is an incomplete gpt2exp checkpoint (its 'model' is not a state dict)")
    payload["config"] = with_model_defaults(payload["config"])
    return payload


def with_model_defaults(config: dict) -> dict:
    """A checkpoint's run config with the model keys added since it was written at their
    defaults (what it was trained with), so that it compares equal to today's config of that
    run; as it is when its model config cannot be built (reading the model says why)."""
    try:
        return config | {"model": plain(ModelConfig.from_dict(config["model"]))}
    except (UserError, KeyError, TypeError):
        return config


def read_torch_file(path: Path, name: str, kind: str, map_location: str | torch.device = "cpu") -> object:
    """What `torch.load(weights_only=True)` reads from `path` (CRCs checked); a file that is not
    one, or is damaged, is a UserError "`name` is not `kind`" / "is corrupt or truncated"."""
    try:
        _check_crcs(path)
        with warnings.catch_warnings():  # torch's note on a pickle protocol it did not write
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{name} is not {kind}") from None
    except (RuntimeError, EOFError, ValueError, KeyError, IndexError, UnicodeDecodeError, zipfile.BadZipFile):
        raise UserError(f"{name} is corrupt or truncated") from None
    except OSError as e:
        raise UserError(f"{name} cannot be read ({e.strerror})") from None


def _check_crcs(path: Path) -> None:
    """Raise `zipfile.BadZipFile` when a record of the checkpoint's zip archive fails its CRC
    (torch.load itself does not check them, so a flipped bit would load silently)."""
    if not zipfile.is_zipfile(path):
        return  # not torch's zip format: torch.load reports what it is
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except OSError as err:  # a damaged directory points outside the file
        raise zipfile.BadZipFile(str(err)) from None
    if bad is not None:
        raise zipfile.BadZipFile(f"bad CRC in {bad}")
