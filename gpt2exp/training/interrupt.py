"""SIGINT/SIGTERM as a request to stop training after the current step (and save a checkpoint)."""

from __future__ import annotations

import functools
import logging
import signal
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# A SIGTERM this soon after the first is the same request delivered twice: SLURM signals every
# process of a job step, and torchrun forwards the SIGTERM it got to its workers once more.
REPEAT_SECONDS = 5.0


class GracefulStop:
    """While entered, the first SIGINT or SIGTERM sets `signum` (training stops after its step);
    a second one stops at once with KeyboardInterrupt, except inside a `shielded` call (a
    checkpoint being written), which it lets finish first. A SIGTERM within `REPEAT_SECONDS` of
    a first SIGTERM is not a second one. Does nothing outside the main thread."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}
        self._shielded = False
        self._pending = False
        self._first_at = 0.0

    def shielded(self, function: Callable) -> Callable:
        """`function`, run to its end even when a second signal arrives meanwhile."""

        @functools.wraps(function)
        def call(*args, **kwargs):
            self._shielded = True
            try:
                return function(*args, **kwargs)
            finally:
                self._shielded = False
                if self._pending:
                    raise KeyboardInterrupt

        return call

    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """The shell's status for death by that signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + (self.signum or 0)

    def _repeated(self, signum: int) -> bool:
        """Whether `signum` is the first SIGTERM again (see `REPEAT_SECONDS`)."""
        return signum == self.signum == signal.SIGTERM and time.monotonic() - self._first_at < REPEAT_SECONDS

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            if self._repeated(signum):
                return
            self._pending = True
            if not self._shielded:
                raise KeyboardInterrupt
            return
        self.signum, self._first_at = signum, time.monotonic()
        log.warning("%s: stopping after this step and saving a checkpoint (Ctrl-C again, or SIGTERM again after "
                    "%.0f s, to stop at once)", signal.Signals(signum).name, REPEAT_SECONDS)

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
