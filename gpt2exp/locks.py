"""Locks that end with their holder: an ``flock`` (through filelock) on a lock file, which the
kernel releases when the holding process ends, however it ends. On a shared file system with
flock support the lock holds across hosts, and the file server frees it when a holder's host
goes away (NFSv4: when the host's lease expires). The lock file names its holder (pid, host,
since when, and what the caller adds) for the messages of those who find it held.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path

from filelock import Timeout, UnixFileLock


class NotALockFile(Exception):
    """The lock's path is a link, a hard link or not a regular file: locking it would write the
    holder's record through to a file that is not the lock's own."""


class HeldLock:
    """A lock this process holds until `release`."""

    def __init__(self, path: Path, lock: UnixFileLock):
        self.path, self._lock = path, lock

    def release(self, *, remove: bool = False) -> None:
        """Give up the lock; `remove` deletes its file first, while it is still held, so that no
        waiter takes a lock on the removed file. Later calls do nothing."""
        if not self._lock.is_locked:
            return
        if remove:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self._lock.release()


def try_lock(path: Path, holder: dict, *, timeout_s: float = 0.0, poll_s: float = 1.0,
             give_up: Callable[[], bool] | None = None) -> HeldLock | None:
    """Lock the file `path` (made if absent) and write `holder` into it, with this process's
    pid and host and the time; None while another process holds it after `timeout_s` seconds
    (or once `give_up()` is true, checked every `poll_s` seconds while waiting).

    Raises NotALockFile when `path` is a link, a hard link or not a regular file, and OSError
    when it cannot be opened or its file system has no flock (a lock there would hold nothing).
    """
    lock = UnixFileLock(path, mode=0o644, blocking=timeout_s > 0, timeout=timeout_s, poll_interval=poll_s,
                        thread_local=False, fallback_to_soft=False, on_acquired=lambda fd: _write(fd, path, holder))
    while True:
        try:
            lock.acquire(cancel_check=give_up)
        except Timeout:
            if os.path.lexists(path):
                return None
            continue  # its holder removed it as this process opened it: the next look finds a fresh file
        except OSError:
            if _not_own_file(path):
                raise NotALockFile(path) from None
            raise
        return HeldLock(path, lock)


def holder_of(path: Path) -> dict | None:
    """The record that the holder of the lock at `path` wrote, or None while there is none (a
    holder that is starting)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _write(fd: int, path: Path, holder: dict) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        raise NotALockFile(path)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"), **holder}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)


def _not_own_file(path: Path) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return not stat.S_ISREG(info.st_mode) or info.st_nlink != 1
