"""W&B run lifecycle, plus the run folder's own metrics.jsonl, samples.jsonl and summary.json."""

from __future__ import annotations

import logging
import netrc
import os
import re
import shutil
import threading
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpt2exp.atomic import write_atomic, write_json_atomic
from gpt2exp.config import MODES
from gpt2exp.errors import UserError
from gpt2exp.network import unreachable
from gpt2exp.runs.jsonl import append_jsonl, jsonl_line, read_jsonl
from gpt2exp.runs.layout import RunLayout

# W&B's view of each job type's metrics: (name or glob, step metric, summary), in order (a
# name's own entry after its glob's). Against tokens seen, so that runs whose steps hold
# different numbers of tokens (a context-length or batch-size sweep) compare on equal footing.
# A generate run logs its gen/* once, at step 0: W&B's defaults (step, last value) fit it.
METRICS = {
    "train": (
        ("tokens_seen", None, None), ("epoch", "tokens_seen", None),
        ("train/*", "tokens_seen", None), ("val/*", "tokens_seen", None), ("lr", "tokens_seen", None),
        ("gen/*", "tokens_seen", None), ("val/loss", "tokens_seen", "min,last"),
        ("val/perplexity", "tokens_seen", "min,last"), ("tokens_per_sec", "tokens_seen", "mean"),
    ),
}
DEFAULT_BASE_URL = "https://api.wandb.ai"
CONNECT_TIMEOUT_S = 3.0

log = logging.getLogger(__name__)


def resolve_mode(mode: str) -> str:
    """The W&B mode to use. "auto" is `$WANDB_MODE` if set, else online given an API key and a
    W&B host that answers within seconds, else offline (said in one line when a key was there).
    Online, asked for by `mode` or `$WANDB_MODE`, without a key or a reachable host is a UserError."""
    key = "logger.mode"
    if mode == "auto" and os.environ.get("WANDB_MODE"):
        key, mode = "WANDB_MODE", {"dryrun": "offline", "run": "online"}.get(os.environ["WANDB_MODE"], os.environ["WANDB_MODE"])
        if mode not in MODES[1:]:
            raise UserError(f"WANDB_MODE: {mode!r} is not one of {', '.join(MODES[1:])}")
    if mode == "auto":
        if not _has_api_key():
            return "offline"
        problem = unreachable(_base_url().geturl(), CONNECT_TIMEOUT_S)
        if problem:
            log.warning("W&B: %s; logging offline (upload later with wandb sync <run folder>/wandb/offline-run-*)",
                        problem)
            return "offline"
        return "online"
    if mode == "online":
        problem = None if _has_api_key() else "no W&B API key (run wandb login, or set WANDB_API_KEY)"
        problem = problem or unreachable(_base_url().geturl(), CONNECT_TIMEOUT_S)
        if problem:
            raise UserError(f"{key}=online: {problem}; use logger.mode=offline and wandb sync later")
    return mode


def _base_url() -> urllib.parse.SplitResult:
    return urllib.parse.urlsplit(os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL)


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc_path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    try:
        return netrc.netrc(netrc_path).authenticators(_base_url().hostname or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _short_error(err: Exception) -> str:
    """W&B's error in a few words: an HTML error page (a host that is no W&B server) by its title."""
    text = str(err)
    title = re.search(r"<title>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    words = (title.group(1) if title else re.sub(r"<[^>]+>", " ", text)).split()
    return " ".join(words[:12]) + (" ..." if len(words) > 12 and not title else "") or type(err).__name__


def _interruptible(call: Callable[[], Any]) -> Any:
    """`call()` in a helper thread, so that Ctrl-C ends the wait at once (W&B's start-up, which
    can wait a minute and more for a slow host, does not give way to it in the main thread)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            outcome["error"] = err

    thread = threading.Thread(target=target, name="wandb-init", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.1)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


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
    group, the name is the run's overrides of the `swept` keys ("decoding.temperature=0.5,
    decoding.top_k=3"; all its overrides but `logger.*` and `hydra.*` ones when none is known
    to be swept), and the tags add "group:option" for every chosen config option (`choices`,
    e.g. {"model": "nano"} -> "model:nano"; Hydra's own groups skipped).
    """
    if group is None and sweep_dir is not None:
        group = sweep_group(sweep_dir)
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


class Tracker:
    """Writes metrics and samples to the run folder (always) and to W&B (when enabled)."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        config: dict,
        backend: str = "wandb",
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
        """`run_id` continues that W&B run (a resumed training run) instead of starting one.
        The W&B config is `config` plus each `swept` key's value under its last part (a short
        top-level key, e.g. "temperature" for decoding.temperature) where that name is free."""
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.mode = resolve_mode(mode) if backend == "wandb" else "disabled"
        self._samples: list[dict] = []
        self._summary: dict = {}
        self._finished = False
        self._run = None
        self._last_step: int | None = None
        if self.mode != "disabled":
            import wandb

            if mode == "auto" or self.mode == "offline":  # W&B's own telemetry would post to the host even so
                os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
            options: dict[str, Any] = dict(
                dir=self.run_dir, config={**config, **short_keys(config, swept)}, project=project, entity=entity, group=group, tags=tags, name=name,
                job_type=job_type, notes=notes, id=run_id, resume="allow" if run_id else None, mode=self.mode,
                reinit="finish_previous", settings=wandb.Settings(quiet=True, silent=True, console="off"),
            )
            wandb_dir = self.run_dir / RunLayout.WANDB
            before = set(wandb_dir.glob("run-*"))
            try:
                self._run = _interruptible(lambda: wandb.init(**options))
            except wandb.errors.Error as err:
                problem = _short_error(err)
                if mode != "auto" or self.mode != "online":
                    raise UserError(f"logger: W&B could not start the run ({problem}); try logger.mode=offline") from None
                log.warning("W&B: %s did not start the run (%s); logging offline", _base_url().netloc, problem)
                self.mode = options["mode"] = "offline"
                self._run = _interruptible(lambda: wandb.init(**options))
                for attempt in set(wandb_dir.glob("run-*")) - before:  # the failed start's folder: its logs alone
                    shutil.rmtree(attempt, ignore_errors=True)
            if self.mode == "online":
                log.info("W&B: %s", self._run.url)
            else:
                log.info("W&B: offline run; upload it with: wandb sync %s", Path(self._run.dir).parent)
            for name, step_metric, summary in METRICS.get(job_type, ()):
                self._run.define_metric(name, step_metric=step_metric, step_sync=step_metric is not None or None,
                                        summary=summary)

    @property
    def run_id(self) -> str | None:
        return self._run.id if self._run else None

    @property
    def url(self) -> str | None:
        return self._run.url if self._run and self.mode == "online" else None

    def carry_over(self, previous_run_dir: str | Path, up_to_step: int) -> None:
        """Start this run folder's metrics and samples with those that `previous_run_dir` logged
        up to `up_to_step` (a resumed run's folder then holds the whole curve; resumed in its own
        folder, what the old run logged after its checkpoint is dropped); W&B already has them."""
        for name in (RunLayout.METRICS, RunLayout.SAMPLES):
            records = [r for r in read_jsonl(Path(previous_run_dir) / name) if r.get("step", 0) <= up_to_step]
            _write_records(self.run_dir / name, records)
            if name == RunLayout.SAMPLES:
                self._samples.extend(records)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """One line `{"step": step, **metrics}` in metrics.jsonl, and the same values at `step` in W&B."""
        append_jsonl(self.run_dir / RunLayout.METRICS, {"step": step, **metrics})
        self._last_step = step
        if self._run:
            self._run.log(metrics, step=step)

    def log_sample(self, *, step: int, prompt: str, text: str, settings: dict) -> None:
        """One line in samples.jsonl; W&B gets all samples as one table at `finish`."""
        sample = {"step": step, "prompt": prompt, "text": text, "settings": dict(settings)}
        append_jsonl(self.run_dir / RunLayout.SAMPLES, sample)
        self._samples.append(sample)

    def log_image(self, key: str, path: str | Path, step: int | None = None) -> None:
        """The image file at `path` under `key` in W&B, at `step` (by default the step metrics were
        last logged at: W&B's own default would move its step on and drop what is logged later at
        that step, a reused model's gen/* or a run's test/*)."""
        if self._run:
            import wandb

            self._run.log({key: wandb.Image(str(path))}, step=self._last_step if step is None else step)

    def log_model(self, path: str | Path, *, aliases: list[str], metadata: dict) -> None:
        """The checkpoint file at `path` as a version of this run's W&B model artifact
        (`model-<run id>`, type "model"). The file W&B uploads (at once, or at `wandb sync` when
        offline) stays with the run: a hard link (else a copy) in the W&B run's own folder,
        `<run folder>/wandb/<run>/artifacts/<first alias>/`, which a later checkpoint that
        replaces or rotates `path` does not change; nothing is staged in W&B's folders under the
        home folder."""
        if self._run:
            import wandb

            path = Path(path)
            staged = Path(self._run.dir).parent / "artifacts" / aliases[0] / path.name
            staged.parent.mkdir(parents=True, exist_ok=True)
            staged.unlink(missing_ok=True)
            try:
                os.link(path, staged)
            except OSError:  # a file system without hard links
                shutil.copyfile(path, staged)
            artifact = wandb.Artifact(f"model-{self._run.id}", type="model", metadata=metadata)
            artifact.add_file(str(staged), name=path.name, policy="immutable", skip_cache=True)
            self._run.log_artifact(artifact, aliases=aliases)

    def summary(self, values: dict) -> None:
        """Merges `values` into the run summary and rewrites summary.json."""
        self._summary.update(values)
        write_json_atomic(self.run_dir / RunLayout.SUMMARY, self._summary)
        if self._run:
            self._run.summary.update(values)

    def finish(self, exit_code: int = 0) -> None:
        """Logs the samples table and closes the W&B run; later calls do nothing."""
        if self._finished:
            return
        self._finished = True
        if not self._run:
            return
        if self._samples:
            self._run.log({"samples": self._samples_table()})
        self._run.finish(exit_code=exit_code)

    def _samples_table(self):
        import wandb

        setting_keys = list(dict.fromkeys(key for s in self._samples for key in s["settings"]))
        rows = [
            [s["step"], s["prompt"], s["text"], *(s["settings"].get(key) for key in setting_keys)]
            for s in self._samples
        ]
        columns = ["step", "prompt", "text", *setting_keys]
        return wandb.Table(columns=columns, data=rows, allow_mixed_types=True)

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
