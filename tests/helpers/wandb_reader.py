"""Reads an offline W&B run back from its `run-<id>.wandb` file, for tests.

The file is a LevelDB-style log: a 7-byte header (b":W&B", 0xBEE1 little-endian, version 0),
then 32 KiB blocks of chunks, each `<crc32 u32><length u16><type u8>` + payload, where
type 1 is a whole record and 2/3/4 are the first/middle/last pieces of one; a block's tail
shorter than a chunk header is zero padding. Each record is a `wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from pathlib import Path

FILE_HEADER = struct.pack("<4sHB", b":W&B", 0xBEE1, 0)
CHUNK_HEADER = struct.Struct("<IHB")
BLOCK_SIZE = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def find_wandb_file(run_dir: str | Path) -> Path:
    """The one offline run's `.wandb` file under `run_dir/wandb/`."""
    (path,) = Path(run_dir).glob("wandb/offline-run-*/run-*.wandb")
    return path


def iter_records(wandb_file: str | Path):
    """Every `Record` in the file, in order; checks each chunk's CRC."""
    from wandb.proto import wandb_internal_pb2

    data = Path(wandb_file).read_bytes()
    assert data[: len(FILE_HEADER)] == FILE_HEADER, f"{wandb_file}: not a W&B log"
    pos, pieces = len(FILE_HEADER), b""
    while pos + CHUNK_HEADER.size <= len(data):
        if BLOCK_SIZE - pos % BLOCK_SIZE < CHUNK_HEADER.size:
            pos += BLOCK_SIZE - pos % BLOCK_SIZE
            continue
        crc, length, chunk_type = CHUNK_HEADER.unpack_from(data, pos)
        payload = data[pos + CHUNK_HEADER.size : pos + CHUNK_HEADER.size + length]
        pos += CHUNK_HEADER.size + length
        if chunk_type == 0:
            continue
        assert crc == zlib.crc32(bytes([chunk_type]) + payload), f"{wandb_file}: bad CRC at {pos}"
        pieces = payload if chunk_type in (FULL, FIRST) else pieces + payload
        if chunk_type in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            yield record


def _set(target: dict, item) -> None:
    """Stores an item's `value_json` under its key (or nested key path) in `target`."""
    keys = [item.key] if item.key else list(item.nested_key)
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = json.loads(item.value_json)


def read_run(wandb_file: str | Path, timeout_s: float = 60.0) -> dict:
    """The run as plain data, once its exit record is on disk (W&B's service process writes
    the file asynchronously, so a run finished in this process may still be flushing).

    Keys: "run_id", "group", "job_type", "name" (each None when not set), "tags", "history" (one
    dict per logged step, in order, with "_step"), "config" (without W&B's own "_wandb"
    entry), "summary", "files" (paths relative to the run's files folder), "tables" ({history key:
    the table's JSON, {"columns", "data"}}),
    "metrics" ({name or glob: {"step_metric", "summary" ops}} from define_metric), "artifacts"
    (each logged artifact's name, type, aliases, metadata and {path: local file}) and
    "exit_code" (None if the run never finished).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            run = _parse_run(Path(wandb_file))
        except AssertionError:  # a chunk still being written
            run = None
        if (run and run["exit_code"] is not None) or time.monotonic() > deadline:
            return run or _parse_run(Path(wandb_file))
        time.sleep(0.2)


def _parse_run(wandb_file: Path) -> dict:
    run = {"run_id": None, "group": None, "job_type": None, "name": None, "tags": [], "history": [], "config": {},
           "summary": {}, "files": [], "metrics": {}, "artifacts": [], "exit_code": None}
    for record in iter_records(wandb_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["run_id"] = record.run.run_id
            run["group"] = record.run.run_group or None
            run["job_type"] = record.run.job_type or None
            run["name"] = record.run.display_name or None
            run["tags"] = list(record.run.tags)
            for item in record.run.config.update:
                _set(run["config"], item)
        elif kind == "config":
            for item in record.config.update:
                _set(run["config"], item)
        elif kind == "history":
            row: dict = {}
            for item in record.history.item:
                _set(row, item)
            run["history"].append(row)
        elif kind == "summary":
            for item in record.summary.update:
                _set(run["summary"], item)
        elif kind == "files":
            run["files"].extend(f.path for f in record.files.files)
        elif kind == "metric":
            metric = record.metric
            ops = [op for op in ("min", "max", "mean", "last", "first", "none") if getattr(metric.summary, op)]
            run["metrics"][metric.name or metric.glob_name] = {"step_metric": metric.step_metric or None,
                                                               "summary": ops}
        elif kind == "artifact":
            artifact = record.artifact
            run["artifacts"].append({
                "name": artifact.name, "type": artifact.type, "aliases": list(artifact.aliases),
                "metadata": json.loads(artifact.metadata or "{}"),
                "files": {entry.path: entry.local_path for entry in artifact.manifest.contents},
            })
        elif kind == "exit":
            run["exit_code"] = record.exit.exit_code
    run["config"].pop("_wandb", None)
    files_dir = wandb_file.parent / "files"
    run["tables"] = {
        key: json.loads((files_dir / value["path"]).read_text())
        for row in run["history"]
        for key, value in row.items()
        if isinstance(value, dict) and value.get("_type") == "table-file"
    }
    return run
