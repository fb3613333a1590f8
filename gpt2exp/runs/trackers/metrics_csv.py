"""CSV (`logger.csv`): `<run folder>/metrics.csv`, one row per step, a column per metric (empty
where a step did not log it), for a spreadsheet or `pandas.read_csv`."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from gpt2exp.atomic import write_atomic


class MetricsCsv:
    """The metrics of each step in one row, written once the run moves past the step (or at
    `finish`); a metric seen for the first time adds a column (the file is written again
    whole). A `trackers.Backend`: samples, images and the summary are the run folder's
    samples.jsonl, its plots and summary.json."""

    def __init__(self, path: Path):
        self.path = path
        self._columns = ["step"]
        self._row: dict | None = None  # the current step's metrics, not yet in the file

    def carry_over(self, metrics: list[dict], samples: list[dict]) -> None:
        """The file afresh: the carried metrics, merged by step."""
        self._columns, self._row = ["step"], None
        rows: list[dict] = []
        for record in metrics:
            if rows and rows[-1]["step"] == record["step"]:
                rows[-1].update(record)
            else:
                rows.append(dict(record))
            self._columns += [key for key in record if key not in self._columns]
        self._write_whole(rows)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self._row is not None and self._row["step"] != step:
            self._flush()
        self._row = {**(self._row or {"step": step}), **metrics}

    def log_sample(self, sample: dict) -> None:
        pass

    def log_image(self, key: str, path: Path, step: int) -> None:
        pass

    def summary(self, values: dict) -> None:
        pass

    def finish(self, exit_code: int) -> None:
        if self._row is not None:
            self._flush()

    def _flush(self) -> None:
        """The current step's row: appended, or with the file written again when it adds columns."""
        row, self._row = self._row or {}, None
        new = [key for key in row if key not in self._columns]
        if new or not self.path.exists():
            with self.path.open(newline="", encoding="utf-8") if self.path.exists() else io.StringIO() as file:
                rows = list(csv.DictReader(file))
            self._columns += new
            self._write_whole([*rows, row])
        else:
            with self.path.open("a", newline="", encoding="utf-8") as file:
                csv.DictWriter(file, self._columns).writerow(row)

    def _write_whole(self, rows: list[dict]) -> None:
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, self._columns)
        writer.writeheader()
        writer.writerows(rows)
        data = text.getvalue().encode()
        write_atomic(self.path, lambda file: file.write(data))
