"""Weights & Biases (`logger.wandb`): the run's metrics against tokens seen, its samples as a
table, images, checkpoints as model artifacts and its summary, online or offline (`wandb sync`
later), in `<run folder>/wandb`."""

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

from gpt2exp.config import MODES
from gpt2exp.errors import UserError
from gpt2exp.network import unreachable
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


class WandbRun:
    """One W&B run (started in `__init__`, ended by `finish`); a `trackers.Backend`."""

    def __init__(self, run_dir: Path, *, config: dict, requested: str, mode: str, project: str,
                 entity: str | None, group: str | None, tags: list[str] | None, name: str | None, job_type: str,
                 notes: str | None, run_id: str | None):
        """`mode` (online or offline) is what `resolve_mode` made of `requested` (logger.mode);
        `run_id` continues that run (a resumed training run) instead of starting one."""
        import wandb

        self.mode = mode
        self._samples: list[dict] = []
        if requested == "auto" or mode == "offline":  # W&B's own telemetry would post to the host even so
            os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
        options: dict[str, Any] = dict(
            dir=run_dir, config=config, project=project, entity=entity, group=group, tags=tags, name=name,
            job_type=job_type, notes=notes, id=run_id, resume="allow" if run_id else None, mode=self.mode,
            reinit="finish_previous", settings=wandb.Settings(quiet=True, silent=True, console="off"),
        )
        wandb_dir = run_dir / RunLayout.WANDB
        before = set(wandb_dir.glob("run-*"))
        try:
            self._run = _interruptible(lambda: wandb.init(**options))
        except wandb.errors.Error as err:
            problem = _short_error(err)
            if requested != "auto" or mode != "online":
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
        for metric, step_metric, summary in METRICS.get(job_type, ()):
            self._run.define_metric(metric, step_metric=step_metric, step_sync=step_metric is not None or None,
                                    summary=summary)

    @property
    def run_id(self) -> str:
        return self._run.id

    @property
    def url(self) -> str | None:
        return self._run.url if self.mode == "online" else None

    def carry_over(self, metrics: list[dict], samples: list[dict]) -> None:
        self._samples.extend(samples)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._run.log(metrics, step=step)

    def log_sample(self, sample: dict) -> None:
        """Kept for one table at `finish`."""
        self._samples.append(sample)

    def log_image(self, key: str, path: Path, step: int) -> None:
        import wandb

        self._run.log({key: wandb.Image(str(path))}, step=step)

    def log_model(self, path: Path, *, aliases: list[str], metadata: dict) -> None:
        """The checkpoint file at `path` as a version of this run's W&B model artifact
        (`model-<run id>`, type "model"). The file W&B uploads (at once, or at `wandb sync` when
        offline) stays with the run: a hard link (else a copy) in the W&B run's own folder,
        `<run folder>/wandb/<run>/artifacts/<first alias>/`, which a later checkpoint that
        replaces or rotates `path` does not change; nothing is staged in W&B's folders under the
        home folder."""
        import wandb

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
        self._run.summary.update(values)

    def finish(self, exit_code: int) -> None:
        """Logs the samples table and closes the run."""
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
