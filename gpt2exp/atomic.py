"""Files that are either whole or absent: each is written to a temporary file beside its
target, synced, then renamed into place, so a crash or a concurrent writer never leaves a
half-written file that a later run would trust."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

_NEARLY_FULL_BYTES = 1 << 20
_TEMPORARY_OWNER = re.compile(r"\.(?P<pid>\d+)@(?P<host>.+)\.\w+\.tmp$")


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call `write(file)` on a temporary file, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _temporary_beside(path) as temporary:
        try:
            with open(temporary, "wb") as file:
                write(file)
                file.flush()
                os.fsync(file.fileno())
        except (OSError, RuntimeError) as err:  # torch.save reports a failed write as a RuntimeError
            failure = _write_error(err, path)
            if failure is None:
                raise
            raise failure from err
        os.chmod(temporary, 0o644)  # mkstemp makes it private to its owner
        os.replace(temporary, path)
    return path


def _write_error(err: BaseException, path: Path) -> OSError | None:
    """An OSError naming `path` and the errno behind a failed write (found in the exception's
    chain, else "no space left" when the disk is full); None when `err` was no write error."""
    cause: BaseException | None = err
    while cause is not None and not (isinstance(cause, OSError) and cause.errno):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, OSError):
        return OSError(cause.errno, cause.strerror, str(path))
    if shutil.disk_usage(path.parent).free < _NEARLY_FULL_BYTES:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return None if isinstance(err, RuntimeError) else OSError(errno.EIO, str(err), str(path))


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


def remove_stale_temporaries(folder: Path) -> None:
    """Remove the temporary files in `folder` whose writer died before renaming them (kill -9):
    those named by a process of this host that no longer runs."""
    host = socket.gethostname()
    for temporary in folder.glob(".*.tmp"):
        owner = _TEMPORARY_OWNER.search(temporary.name)
        if owner and owner["host"] == host and not process_alive(int(owner["pid"])):
            with contextlib.suppress(OSError):
                temporary.unlink()


def process_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _temporary_beside(path: Path) -> Iterator[str]:
    """A fresh temporary file name in `path`'s folder (naming this process, so that a later
    writer can remove it should this one die), removed if the block does not rename it; the
    folder is synced afterwards so the rename itself survives a crash."""
    remove_stale_temporaries(path.parent)
    owner = f"{os.getpid()}@{socket.gethostname()}"
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{owner}.", suffix=".tmp")
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
