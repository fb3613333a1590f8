"""A run's folder has one owner: the process that claims it makes it (recording every folder it
makes), holds its lock for the run's life, and on a user error takes back only what it added.

The lock is a `gpt2exp.locks` lock on ``<folder>/.run.lock`` (an flock: the kernel releases it
when its process dies, however it dies, so a lock is never stale); the file names the owner for
the error that a second run gets. A folder that already holds a run (``.hydra/``, or a sweep's
``multirun.yaml``) is refused unless the new run continues it (``trainer.resume``).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sys
from pathlib import Path

from gpt2exp.errors import UserError
from gpt2exp.locks import HeldLock, NotALockFile, holder_of, try_lock
from gpt2exp.runs.layout import RunLayout

LOCK_FILE = ".run.lock"
SWEEP_FILE = "multirun.yaml"
_HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")

_claimed: dict[Path, RunFolder] = {}


class RunFolder:
    """A folder this process owns until `release`: see `claim`."""

    def __init__(self, path: Path, key: str, made: list[Path]):
        self.path, self.key, self.made = path, key, made
        self.entries = {p.name for p in path.iterdir()}
        self.held_run = bool(self.entries & {RunLayout.HYDRA, SWEEP_FILE})
        self._saved = {name: _read_bytes(path / RunLayout.HYDRA / name) for name in _HYDRA_FILES}
        self._log_sizes = {p.name: p.stat().st_size for p in path.glob("*.log") if p.is_file()}
        self._lock: HeldLock | None = None

    def held_configs(self) -> tuple[bytes | None, bytes | None]:
        """Hydra's .hydra/config.yaml in this folder as it was when claimed (the run it held) and now."""
        return self._saved["config.yaml"], _read_bytes(self.path / RunLayout.HYDRA / "config.yaml")

    def undo(self) -> None:
        """Take back what this run added: the run's own entries that were not there when it
        claimed the folder, Hydra's .hydra files as they were, log files cut back to their old
        length, then each folder the claim made, if it is empty."""
        for name in RunLayout.entries() + tuple(p.name for p in self.path.glob("*.log")):
            target = self.path / name
            if name in self.entries or not (target.exists() or target.is_symlink()):
                continue
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
        if self.held_run:
            for name, data in self._saved.items():
                target = self.path / RunLayout.HYDRA / name
                if data is None:
                    target.unlink(missing_ok=True)
                elif _read_bytes(target) != data:
                    target.write_bytes(data)
        for name, size in self._log_sizes.items():
            with contextlib.suppress(OSError), open(self.path / name, "r+b") as log_file:
                log_file.truncate(size)
        self.release()
        _remove_empty(self.made)

    def release(self) -> None:
        """Give up the lock (and remove its file); later calls do nothing."""
        _claimed.pop(self.path, None)
        if self._lock is not None:
            self._lock.release(remove=True)
            self._lock = None

    def _take_lock(self) -> None:
        lock_path = self.path / LOCK_FILE
        try:  # never through a link: the run would overwrite the file it points at
            self._lock = try_lock(lock_path, {"command": _command_line()})
        except NotALockFile:
            raise UserError(_not_a_lock(self.key, lock_path)) from None
        except OSError as err:
            raise UserError(f"{self.key}: cannot write in '{self.path}' ({err.strerror})") from None
        if self._lock is None:
            raise UserError(f"{self.key}: '{self.path}' is in use by another run ({_owner(lock_path)}); "
                            "choose another folder, or wait until that run ends")


def claim(path: str | Path, *, key: str, may_continue: bool = False) -> RunFolder:
    """Make `path` (and its missing parents) and lock it for this process.

    Raises UserError naming `key` when the folder cannot be made, another live run holds it, it
    holds an earlier run (a `.hydra` folder) and `may_continue` is false, or it holds other files
    under the names a run writes (which the run would append to or replace).
    """
    path = Path(os.path.abspath(path))
    made = _make_folders(path, key)
    folder = RunFolder(path, key, made)
    try:
        folder._take_lock()
    except UserError:
        _remove_empty(made)
        raise
    if folder.held_run and not may_continue:
        folder.release()
        raise UserError(
            f"{key}: '{path}' already holds a run; choose a new folder (or leave {key} unset), "
            "or continue that run with trainer.resume=auto"
        )
    clashes = sorted(folder.entries & set(RunLayout.entries()))
    if clashes and not folder.held_run:
        folder.release()
        raise UserError(f"{key}: '{path}' holds files of the names a run writes ({', '.join(clashes)}); "
                        "choose another folder")
    _claimed[path] = folder
    return folder


def claimed(path: str | Path) -> RunFolder | None:
    """The folder this process claimed at `path`, if any."""
    return _claimed.get(Path(os.path.abspath(path)))


def release_all() -> None:
    """Release every folder this process still holds."""
    for folder in list(_claimed.values()):
        folder.release()


def _make_folders(path: Path, key: str) -> list[Path]:
    """mkdir -p, returning the folders it made, outermost first."""
    missing = []
    for folder in [path, *path.parents]:
        if folder.is_dir():
            break
        missing.append(folder)
    made: list[Path] = []
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            if not folder.is_dir():
                raise UserError(f"{key}: '{folder}' exists and is not a folder") from None
            continue  # made by a concurrent run just now: not ours
        except OSError as err:
            _remove_empty(made)
            raise UserError(f"{key}: cannot make the run folder '{path}' ({err.strerror})") from None
        made.append(folder)
    return made


def _remove_empty(folders: list[Path]) -> None:
    """rmdir each folder, innermost first; one that holds anything stays."""
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _command_line() -> str:
    """This process's command line as typed: `python -m <module> ...` for a module run."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    start = ["python", "-m", spec.name] if spec else ["python", sys.argv[0]]
    return shlex.join([*start, *sys.argv[1:]])


def _not_a_lock(key: str, lock_path: Path) -> str:
    return (f"{key}: '{lock_path}' is not a lock file of its own (a link, or not a regular file); "
            "remove it if no run uses the folder, or choose another folder")


def _owner(lock_path: Path) -> str:
    owner = holder_of(lock_path) or {}
    try:
        return f"pid {owner['pid']} on {owner['host']}, started {owner['since']}: {owner['command']}"
    except KeyError:
        return "a process that is starting"


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None
