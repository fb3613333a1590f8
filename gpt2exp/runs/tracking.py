"""The run's tracker: the run folder's own metrics.jsonl, samples.jsonl and summary.json, and
the tools it logs to besides (`runs.trackers`: W&B, TensorBoard, CSV); a W&B run's identity."""

from __future__ import annotations

import contextlib
from collections.abc import Collection
from pathlib import Path
from typing import Any

from gpt2exp.atomic import write_atomic, write_json_atomic
from gpt2exp.runs.jsonl import append_jsonl, jsonl_line, read_jsonl
from gpt2exp.runs.layout import RunLayout
from gpt2exp.runs.trackers import Backend, tensorboard_events
from gpt2exp.runs.trackers.metrics_csv import MetricsCsv
from gpt2exp.runs.trackers.tensorboard_events import TensorBoardEvents
from gpt2exp.runs.trackers.wandb_run import WandbRun, resolve_mode


def short_keys(config: dict, keys: list[str] | tuple[str, ...]) -> dict:
    """{last part of each dotted key: its value in `config`} for keys whose last part is not
    already a top-level key of `config` nor shared with another key."""
    names = [key.rsplit(".", 1)[-1] for key in keys]
    short = {}
    for key, name in zip(keys, names):
        value: Any = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if "." in key and name not in config and names.count(name) == 1 and value is not None:
            short[name] = value
    return short


def sweep_group(sweep_dir: str | Path) -> str:
    """The W&B group of a sweep: the sweep folder's last two parts, e.g.
    outputs/multirun/2026-11-27/08-22-56 -> "2026-11-27_08-22-56"."""
    return "_".join(part for part in Path(sweep_dir).parts[-2:] if part not in ("", ".", "/"))


def run_identity(
    *,
    group: str | None = None,
    name: str | None = None,
    tags: list[str] | tuple[str, ...] = (),
    sweep_dir: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    swept: set[str] | frozenset[str] = frozenset(),
    choices: dict[str, str | None] | None = None,
) -> dict:
    """W&B `group`, `name` and `tags` for one run (keyword arguments for `Tracker`).

    Values the user set win. Otherwise a job of a sweep (`sweep_dir` given) joins the sweep's
    group (over seeds, `seed` swept: the sweep's group and the job's setting, its overrides of the
    other swept keys, so that W&B groups the seeds of a setting as `compare` does), the name is
    the run's overrides of the `swept` keys ("decoding.temperature=0.5, decoding.top_k=3"; all its
    overrides but `logger.*` and `hydra.*` ones when none is known to be swept), and the tags add
    "group:option" for every chosen config option (`choices`, e.g. {"model": "nano"} ->
    "model:nano"; Hydra's own groups skipped).
    """
    if group is None and sweep_dir is not None:
        setting = [o for o in overrides if _override_key(o) in swept and _override_key(o) != "seed"]
        group = sweep_group(sweep_dir) + (":" + ",".join(setting) if "seed" in swept and setting else "")
    if name is None:
        named = [o for o in overrides if _override_key(o) in swept] or [o for o in overrides if not _is_bookkeeping(o)]
        name = ",".join(named) or None
    chosen = [f"{k}:{v}" for k, v in (choices or {}).items() if v is not None and k.split("/")[0] != "hydra"]
    return {"group": group, "name": name, "tags": list(dict.fromkeys([*tags, *chosen]))}


def _override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def _is_bookkeeping(override: str) -> bool:
    """Overrides of where and how a run is logged or launched, not of what it computes."""
    return _override_key(override).split(".")[0].split("/")[0] in ("logger", "hydra")


def _write_records(path: Path, records: list[dict]) -> None:
    text = "".join(map(jsonl_line, records)).encode()
    write_atomic(path, lambda file: file.write(text))


BACKENDS = ("wandb", "tensorboard", "csv")  # the tools a Tracker can log to (LoggerConfig's flags)


class Tracker:
    """The run's tracker: metrics, samples and the summary go to the run folder's own files
    (always) and to each of `backends` (W&B, TensorBoard, CSV), which it starts and finishes."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        config: dict,
        backends: Collection[str] = ("wandb",),
        mode: str = "auto",
        project: str = "gpt2exp",
        entity: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        name: str | None = None,
        job_type: str = "train",
        notes: str | None = None,
        run_id: str | None = None,
        swept: list[str] | tuple[str, ...] = (),
    ):
        """`mode`, `project` ... `run_id` are W&B's (`run_id` continues that W&B run, a resumed
        training run, instead of starting one; `mode` disabled leaves W&B out). The W&B config
        is `config` plus each `swept` key's value under its last part (a short top-level key,
        e.g. "temperature" for decoding.temperature) where that name is free."""
        unknown = sorted(set(backends) - set(BACKENDS))
        if unknown:
            raise ValueError(f"unknown tracker backends {unknown}; known: {BACKENDS}")
        if "tensorboard" in backends:
            tensorboard_events.check_installed()
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._summary: dict = {}
        self._finished = False
        self._last_step: int | None = None
        self._wandb: WandbRun | None = None
        self._backends: list[Backend] = []
        wandb_mode = resolve_mode(mode) if "wandb" in backends else "disabled"
        if wandb_mode != "disabled":
            self._wandb = WandbRun(
                self.run_dir, config={**config, **short_keys(config, swept)}, requested=mode, mode=wandb_mode,
                project=project, entity=entity, group=group, tags=tags, name=name, job_type=job_type, notes=notes,
                run_id=run_id)
            self._backends.append(self._wandb)
        if "tensorboard" in backends:
            self._backends.append(TensorBoardEvents(self.run_dir / RunLayout.TENSORBOARD, config=config))
        if "csv" in backends:
            self._backends.append(MetricsCsv(self.run_dir / RunLayout.METRICS_CSV))

    @property
    def run_id(self) -> str | None:
        return self._wandb.run_id if self._wandb else None

    @property
    def url(self) -> str | None:
        return self._wandb.url if self._wandb else None

    def carry_over(self, previous_run_dir: str | Path, up_to_step: int) -> None:
        """Start this run folder's metrics and samples with those that `previous_run_dir` logged
        up to `up_to_step` (a resumed run's folder then holds the whole curve; resumed in its own
        folder, what the old run logged after its checkpoint is dropped); so do TensorBoard and
        the CSV file (W&B already has them)."""
        carried = {}
        for name in (RunLayout.METRICS, RunLayout.SAMPLES):
            records = [r for r in read_jsonl(Path(previous_run_dir) / name) if r.get("step", 0) <= up_to_step]
            _write_records(self.run_dir / name, records)
            carried[name] = records
        for backend in self._backends:
            backend.carry_over(carried[RunLayout.METRICS], carried[RunLayout.SAMPLES])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """One line `{"step": step, **metrics}` in metrics.jsonl, and the same values at `step` in
        each backend."""
        append_jsonl(self.run_dir / RunLayout.METRICS, {"step": step, **metrics})
        self._last_step = step
        for backend in self._backends:
            backend.log_metrics(metrics, step)

    def log_sample(self, *, step: int, prompt: str, text: str, settings: dict) -> None:
        """One line in samples.jsonl; W&B gets all samples as one table at `finish`, TensorBoard
        each as text at its step."""
        sample = {"step": step, "prompt": prompt, "text": text, "settings": dict(settings)}
        append_jsonl(self.run_dir / RunLayout.SAMPLES, sample)
        for backend in self._backends:
            backend.log_sample(sample)

    def log_image(self, key: str, path: str | Path, step: int | None = None) -> None:
        """The image file at `path` under `key` in each backend, at `step` (by default the step
        metrics were last logged at: W&B's own default would move its step on and drop what is
        logged later at that step, a reused model's gen/* or a run's test/*)."""
        at = step if step is not None else self._last_step or 0
        for backend in self._backends:
            backend.log_image(key, Path(path), at)

    def log_model(self, path: str | Path, *, aliases: list[str], metadata: dict) -> None:
        """The checkpoint file at `path` as a W&B model artifact (see `WandbRun.log_model`)."""
        if self._wandb:
            self._wandb.log_model(Path(path), aliases=aliases, metadata=metadata)

    def summary(self, values: dict) -> None:
        """Merges `values` into the run summary and rewrites summary.json."""
        self._summary.update(values)
        write_json_atomic(self.run_dir / RunLayout.SUMMARY, self._summary)
        for backend in self._backends:
            backend.summary(self._summary)

    def finish(self, exit_code: int = 0) -> None:
        """Finishes every backend (W&B: the samples table, the run's exit code); later calls do
        nothing."""
        if self._finished:
            return
        self._finished = True
        with contextlib.ExitStack() as each:  # every backend finishes, even after one that raised
            for backend in reversed(self._backends):
                each.callback(backend.finish, exit_code)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(exit_code=1 if exc_type else 0)


class NullTracker:
    """What the ranks besides 0 of a distributed job log to: nothing (rank 0 logs for the job)."""

    run_id = None

    def carry_over(self, previous_run_dir: str | Path, up_to_step: int) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_sample(self, *, step: int, prompt: str, text: str, settings: dict) -> None:
        pass

    def log_image(self, key: str, path: str | Path, step: int | None = None) -> None:
        pass

    def log_model(self, path: str | Path, *, aliases: list[str], metadata: dict) -> None:
        pass

    def summary(self, values: dict) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        pass
