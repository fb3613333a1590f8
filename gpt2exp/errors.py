"""The exceptions an entrypoint turns into an exit status instead of a traceback."""

from typing import Any


class UserError(Exception):
    """Bad input from the user: entrypoints print its message as one line and exit 2."""


class AlreadyComplete(Exception):
    """The run asked for has nothing left to do (a finished run resumed): entrypoints say so,
    write nothing and exit 0; `result` is what the run's task returns (in a sweep)."""

    def __init__(self, message: str, result: Any = None):
        super().__init__(message)
        self.result = result
