"""A run's JSON-lines files (metrics.jsonl, samples.jsonl): one record appended per line, and
read back by every reader the same way."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path


def jsonl_line(record: dict) -> str:
    return json.dumps(record, default=float) + "\n"


def append_jsonl(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(jsonl_line(record))


def read_jsonl(path: str | Path, valid: Callable[[dict], bool] = lambda record: True,
               log: logging.Logger | None = None) -> list[dict]:
    """The file's records (JSON objects) for which `valid(record)` holds; a missing file is
    empty. The other lines (a killed run's torn last line, hand-edited, not UTF-8) are skipped;
    with `log`, one warning names the file and their line numbers."""
    path = Path(path)
    if not path.is_file():
        return []
    records, skipped = [], []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            record = json.loads(line.decode("utf-8"))
        except ValueError:
            record = None
        if isinstance(record, dict) and valid(record):
            records.append(record)
        elif line.strip():
            skipped.append(number)
    if skipped and log is not None:
        shown = ", ".join(map(str, skipped[:10])) + (f" and {len(skipped) - 10} more" if len(skipped) > 10 else "")
        log.warning("%s: skipping %d malformed line%s (line %s)", path, len(skipped), "s"[: len(skipped) > 1], shown)
    return records
