"""A run's rotating checkpoints: its checkpoint folder holds `step-<step>.pt` files (the newest
`keep_last` are kept), `last.pt` (a hard link to the newest, or a copy where links are not
possible) and `best.pt` (the weights at the lowest val loss), each replaced atomically (the file
format: `gpt2exp.modeling.checkpoint`)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

from gpt2exp.atomic import link_atomic
from gpt2exp.errors import UserError
from gpt2exp.modeling.checkpoint import load_checkpoint, save_checkpoint
from gpt2exp.runs.layout import LAST_CHECKPOINT

_STEP_FILE = re.compile(r"step-(\d+)\.pt")

log = logging.getLogger(__name__)


def step_checkpoints(folder: str | Path) -> list[Path]:
    """The folder's `step-<step>.pt` files, oldest step first."""
    folder = Path(folder)
    found = [(int(m.group(1)), p) for p in folder.glob("step-*.pt") if (m := _STEP_FILE.fullmatch(p.name))]
    return [path for _, path in sorted(found)]


def save_step_checkpoint(folder: str | Path, *, step: int, keep_last: int, **payload) -> Path:
    """Save `folder/step-<step>.pt` (see `save_checkpoint` for `payload`), point `last.pt` at it
    and delete all but the newest `keep_last` step files."""
    folder = Path(folder)
    path = save_checkpoint(folder / f"step-{step:08d}.pt", step=step, **payload)
    link_atomic(path, folder / LAST_CHECKPOINT)
    for old in step_checkpoints(folder)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def load_latest_checkpoint(
    folder: str | Path, check: Callable[[dict, Path], None] = lambda checkpoint, path: None
) -> tuple[Path, dict] | None:
    """The newest step checkpoint in `folder` that loads and passes `check` (which raises
    UserError); a corrupt, truncated or failing one is skipped with a warning and the one before
    it tried. None when there is no usable one."""
    for path in reversed(step_checkpoints(folder)):
        try:
            checkpoint = load_checkpoint(path)
            check(checkpoint, path)
            return path, checkpoint
        except UserError as err:
            log.warning("%s; falling back to the checkpoint before it", err)
    return None
