"""Files that are either whole or absent: each is written to a temporary file beside its
target, synced, then renamed into place, so a crash or a concurrent writer never leaves a
half-written file that a later run would trust."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call `write(file)` on a temporary file, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _temporary_beside(path) as temporary:
        with open(temporary, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it private to its owner
        os.replace(temporary, path)
    return path


def write_json_atomic(path: str | Path, data: dict) -> Path:
    return write_atomic(path, lambda file: file.write(json.dumps(data, indent=2, default=float).encode()))


def link_atomic(source: str | Path, target: str | Path) -> Path:
    """Make `target` the same file as `source` (a hard link, else a copy), replacing any old one."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _temporary_beside(target) as temporary:
        os.unlink(temporary)
        try:
            os.link(source, temporary)
        except OSError:  # another file system, or links not supported
            shutil.copyfile(source, temporary)
        os.replace(temporary, target)
    return target


@contextlib.contextmanager
def _temporary_beside(path: Path) -> Iterator[str]:
    """A fresh temporary file name in `path`'s folder, removed if the block does not rename it;
    the folder is synced afterwards so the rename itself survives a crash."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield temporary
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
