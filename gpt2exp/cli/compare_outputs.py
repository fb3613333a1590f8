"""Which files of a ``compare --out`` folder compare may replace: those it wrote there before, as
its record (`RECORD`) lists them. A file of one of compare's names that compare did not write (a
user's own compare.csv, say) is never replaced: compare refuses the folder before writing."""

import json
import re
from pathlib import Path

from gpt2exp.atomic import write_json_atomic
from gpt2exp.errors import UserError

RECORD = ".compare-outputs.json"
NAMES = re.compile(r"compare(_seeds)?\.(csv|md)|val_loss\.png|.+_vs_.+\.png")  # what compare writes


def check_free(out_dir: Path) -> None:
    """Raise if `out_dir` holds an entry of compare's names that its record does not list."""
    if not out_dir.is_dir():
        return
    ours = _recorded(out_dir)
    theirs = sorted(entry.name for entry in out_dir.iterdir() if NAMES.fullmatch(entry.name) and entry.name not in ours)
    if theirs:
        raise UserError(f"--out {out_dir}: holds {theirs[0]}, which compare did not write there; name another folder")


def record(out_dir: Path, written: dict) -> dict:
    """Add the files in `written` (compare's result) to `out_dir`'s record; returns `written`."""
    names = {value.name for value in written.values() if isinstance(value, Path)}
    write_json_atomic(out_dir / RECORD, {"files": sorted(_recorded(out_dir) | names)})
    return written


def _recorded(out_dir: Path) -> set[str]:
    try:
        files = json.loads((out_dir / RECORD).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    return {name for name in files if isinstance(name, str)} if isinstance(files, list) else set()
