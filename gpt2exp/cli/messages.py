"""How every command ends on a user mistake: one line on stderr, ``error: <what is wrong>``, and
exit status 2. Light on imports, so that a command that needs no Hydra (compare) starts fast."""

import sys
from typing import NoReturn

from gpt2exp.errors import UserError

_NOISE = ("full_key:", "object_type=", "reference_type=", "Set the environment variable HYDRA_FULL_ERROR")


def one_line(err: BaseException) -> str:
    """An exception and its cause as one line, without OmegaConf's key/type trailer; the
    config key it concerns leads when the text does not name it."""
    parts: list[str] = []
    key = None
    cause: BaseException | None = err
    while cause is not None and len(parts) < 2:
        lines = [line.strip() for line in str(cause).splitlines()]
        text = " ".join(line for line in lines if line and not line.startswith(_NOISE))
        if text and text not in parts:
            parts.append(text.rstrip(".") if cause.__cause__ else text)
        key = key or getattr(cause, "full_key", None)
        cause = cause.__cause__
    message = ": ".join(parts)
    return message if not key or key in message else f"{key}: {message}"


_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}


def error_message(err: BaseException) -> str:
    """The one line an entrypoint prints for a user mistake (after "error: "); a line break in a
    value the user gave is shown escaped, so the line stays one."""
    return str(err).translate(_LINE_BREAKS) if isinstance(err, UserError) else one_line(err)


def fail(message: str, status: int = 2) -> NoReturn:
    """End the command: ``error: <message>`` on stderr, exit `status`."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)
