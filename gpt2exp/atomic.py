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
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from filelock import lock_descriptor

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
        os.chmod(temporary, plain_file_mode())  # mkstemp makes it private to its owner
        os.replace(temporary, path)
    return path


def plain_file_mode() -> int:
    """The mode `open(path, "w")` gives a new file: 0o666 less this process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


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
        with _held(temporary):  # the name is a new file now: the lock marks it as written
            os.replace(temporary, target)
    return target


def remove_stale_temporaries(folder: Path) -> None:
    """Remove the temporary files in `folder` whose writer died before renaming them (kill -9).

    A writer holds an flock on its temporary file for as long as it writes it, and the kernel
    drops the lock with the process; so a temporary no one holds a lock on is stale, whichever
    pid namespace, container or host (on a shared file system) its writer ran in.
    """
    for temporary in folder.glob(".*.tmp"):
        if _TEMPORARY_OWNER.search(temporary.name):
            with contextlib.suppress(OSError), _held(temporary, wait=False):
                temporary.unlink()


@contextlib.contextmanager
def folder_atomic(out: Path) -> Iterator[Path]:
    """A hidden staging folder beside `out` (absent, or an empty folder) to fill in the block,
    renamed to `out` when the block ends; when it raises, the staging folder and the parent
    folders made for it are removed, so a failed write leaves nothing."""
    made = [folder for folder in (out.parent, *out.parent.parents) if not folder.exists()]
    staging = out.parent / f".{out.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
        yield staging
        for file in staging.rglob("*"):  # some writers (safetensors) make their files private to their owner
            if file.is_file() and not file.is_symlink():
                os.chmod(file, plain_file_mode())
        os.replace(staging, out)  # an empty folder at `out` is replaced
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


@contextlib.contextmanager
def _held(path: str | Path, *, wait: bool = True) -> Iterator[None]:
    """An exclusive flock on the file `path` names, for the block (see `_lock`)."""
    fd = _lock(path, wait=wait)
    try:
        yield
    finally:
        os.close(fd)


def _lock(path: str | Path, *, wait: bool = True) -> int:
    """A descriptor holding an exclusive lock (filelock's flock, as in `gpt2exp.locks`) on the
    file `path` names. Raises FileNotFoundError when `path` names no file, or another one once the
    lock is held (a clean-up removed it), and, when not `wait`ing, BlockingIOError while another
    process holds the lock."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        if not lock_descriptor(fd, blocking=wait):
            raise BlockingIOError(errno.EWOULDBLOCK, "locked by its writer", str(path))
        locked, named = os.fstat(fd), os.stat(path, follow_symlinks=False)
        if (locked.st_dev, locked.st_ino) != (named.st_dev, named.st_ino):
            raise FileNotFoundError(errno.ENOENT, "removed by a clean-up", str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def _temporary_beside(path: Path) -> Iterator[str]:
    """A fresh temporary file name in `path`'s folder, locked for the block (see
    `remove_stale_temporaries`) and named after this process for a person's eyes, removed if the
    block does not rename it; the folder is synced afterwards so the rename itself survives a crash."""
    remove_stale_temporaries(path.parent)
    owner = f"{os.getpid()}@{socket.gethostname()}"
    lock = None
    while lock is None:  # again if another writer's clean-up took the file before it was locked
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{owner}.", suffix=".tmp")
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            lock = _lock(temporary)
    try:
        yield temporary
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        os.close(lock)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
