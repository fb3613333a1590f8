"""Where a run resumes from: ``trainer.resume=<run folder>`` or ``auto``: the newest run folder
under the same outputs root whose config matches, or, for a fixed run folder, that folder only
(afresh when it has no checkpoint yet: the re-queue of a run stopped before its first)."""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from gpt2exp.errors import UserError
from gpt2exp.modeling.checkpoint import with_model_defaults
from gpt2exp.runs.layout import RunLayout
from gpt2exp.training.fingerprint import config_hash, without_keys
from gpt2exp.training.step_checkpoints import load_latest_checkpoint, step_checkpoints
from gpt2exp.training.trainer import TrainState

log = logging.getLogger(__name__)

# Keys that may change between a run and its resumption without changing what is trained.
IGNORED_KEYS = ("trainer.resume", "trainer.progress", "trainer.reuse_wait_minutes", "logger", "data.cache_dir",
                "trainer.strategy")
# Keys that say how long to train and what to do on the way (evaluate, sample, checkpoint):
# `auto` continues a run whatever they were, so that "train longer" is a larger max_steps.
PLAN_KEYS = (
    "trainer.max_steps", "trainer.epochs", "trainer.eval_freq", "trainer.eval_iter", "trainer.sample_freq",
    "trainer.start_context", "trainer.checkpoint_freq", "trainer.checkpoint_minutes", "trainer.keep_last",
    "trainer.keep_best", "trainer.save_optimizer", "trainer.compile", "trainer.activation_checkpointing",
    "trainer.test", "trainer.early_stopping", "decoding", "inference",
)


@dataclass
class ResumePoint:
    """The checkpoint a run continues from, and the run folder it was found in."""

    run_dir: Path
    path: Path
    checkpoint: dict


def config_fingerprint(config: dict) -> str:
    """A hash of a resolved config without the `IGNORED_KEYS` and `PLAN_KEYS`."""
    return config_hash(config, IGNORED_KEYS + PLAN_KEYS)


def _flat(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def outputs_root(run_dir_pattern: str, run_dir: Path, launch_dir: Path) -> Path | None:
    """The folder that all run folders of Hydra's run-dir pattern share: `outputs` for
    `outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}` (relative to `launch_dir`, where the command was
    run); None for a fixed run folder, whose runs `auto` looks for in that folder only."""
    static = run_dir_pattern.split("${", 1)[0]
    if static == run_dir_pattern:
        return None
    return launch_dir / (static if static.endswith("/") else str(Path(static).parent))


def find_resume_point(resume: str | None, config: dict, *, run_dir: Path, root: Path | None,
                      held_configs: tuple[bytes | None, bytes | None] | None = None) -> ResumePoint | None:
    """The checkpoint that `resume` (a run folder, "auto" or None) names, checked against `config`.

    A run folder without a usable checkpoint, or whose model differs, is a UserError. "auto" looks
    under `root`, or in `run_dir` alone when `root` is None, and starts afresh (None) without a
    match. `held_configs` is Hydra's config.yaml of `run_dir` when it was claimed and now, when it
    held a run: "auto" starts afresh in it only when that run had this config.
    """
    if resume is None:
        return None
    if resume == "auto":
        if root is None:
            return _own_point(run_dir, config, held_configs)
        point = _newest_matching(root, config_fingerprint(config), prefer=run_dir)
        if point is None:
            log.info("trainer.resume=auto: no run under '%s' with this config has a checkpoint; starting afresh", root)
        else:
            _check_compatible(point, config)
        return point
    return _named_point(resume, config)


def _named_point(resume: str, config: dict) -> ResumePoint:
    folder = Path(resume).expanduser()
    if folder.name == RunLayout.CHECKPOINTS:
        folder = folder.parent
    try:
        exists = folder.is_dir()
        found = load_latest_checkpoint(folder / RunLayout.CHECKPOINTS, check=_check_resumable) if exists else None
    except OSError as err:
        raise UserError(f"trainer.resume: cannot read '{resume}' ({err.strerror})") from None
    if not exists:
        raise UserError(f"trainer.resume: no such run folder '{resume}'")
    if found is None:
        raise UserError(f"trainer.resume: no usable checkpoint in '{folder / RunLayout.CHECKPOINTS}'")
    point = ResumePoint(folder, *found)
    _check_compatible(point, config)
    return point


def _own_point(run_dir: Path, config: dict, held_configs: tuple[bytes | None, bytes | None] | None):
    """In a fixed run folder, "auto" continues the folder's own newest checkpoint; without one it
    starts afresh (in a folder that holds a run, only if that run had this config)."""
    if step_checkpoints(run_dir / RunLayout.CHECKPOINTS):
        return _named_point(str(run_dir), config)
    if held_configs is None:
        log.info("trainer.resume=auto: no checkpoint in this run's folder '%s' (a fixed run folder continues "
                 "only its own run); starting afresh", run_dir)
        return None
    if changed := _changed_keys(*held_configs):
        raise UserError(f"trainer.resume=auto: '{run_dir}' holds a run with another config ({changed[0]} "
                        "differs) and no checkpoint; choose another folder, or give that run's settings")
    log.info("trainer.resume=auto: '%s' holds this run's config and no checkpoint yet: starting afresh in it "
             "(its metrics.jsonl and samples.jsonl start again; its other files stay)", run_dir)
    return None


def _changed_keys(before: bytes | None, now: bytes | None) -> list[str]:
    """The keys in which two of Hydra's config.yaml differ, besides `IGNORED_KEYS` and `PLAN_KEYS`
    (["config.yaml"] when either cannot be read)."""
    try:
        before_keys, now_keys = (_flat(without_keys(yaml.safe_load(text), IGNORED_KEYS + PLAN_KEYS))
                                 for text in (before, now))
    except (TypeError, AttributeError, yaml.YAMLError):
        return ["config.yaml"]
    return sorted(key for key in before_keys.keys() | now_keys.keys() if before_keys.get(key) != now_keys.get(key))


def _newest_matching(root: Path, fingerprint: str, *, prefer: Path) -> ResumePoint | None:
    """The run folder under `root` (or `prefer`, this run's own, first) whose newest checkpoint
    has this fingerprint, newest first."""
    candidates = []
    folders = {c.parent.resolve(): c for c in [prefer / RunLayout.CHECKPOINTS, *root.rglob(RunLayout.CHECKPOINTS)]}
    for checkpoints in folders.values():
        files = step_checkpoints(checkpoints)
        try:
            mtime = files[-1].stat().st_mtime if files else None
        except OSError:  # a dangling link, or a file removed meanwhile
            continue
        if mtime is not None:
            own = checkpoints.parent.resolve() == prefer.resolve()
            candidates.append((own, mtime, checkpoints.parent))
    for _, _, folder in sorted(candidates, key=lambda c: c[:2], reverse=True):
        if _stored_fingerprint(folder / RunLayout.CHECKPOINTS) != fingerprint:
            continue
        found = load_latest_checkpoint(folder / RunLayout.CHECKPOINTS, check=_check_resumable)
        if found is not None:
            return ResumePoint(folder, *found)
    return None


def _stored_fingerprint(checkpoints: Path) -> str | None:
    """The config fingerprint of the newest checkpoint in the folder that reads, read without
    loading its tensors."""
    for path in reversed(step_checkpoints(checkpoints)):
        try:
            return config_fingerprint(with_model_defaults(torch.load(path, mmap=True, weights_only=True)["config"]))
        except Exception:  # noqa: BLE001 - an unreadable file: try the one before it
            continue
    return None


def _check_resumable(checkpoint: dict, path: Path) -> None:
    """Raise UserError unless the checkpoint holds all that resuming reads."""
    extra, config = checkpoint["extra"], checkpoint["config"]
    try:
        TrainState.from_dict(extra["train_state"])
        complete = isinstance(extra["rng"], dict) and isinstance(checkpoint["optimizer"], (dict, type(None)))
        complete = complete and isinstance(config["model"], dict) and isinstance(config["data"]["batch_size"], int)
    except (KeyError, TypeError):
        complete = False
    if not complete:
        raise UserError(f"trainer.resume: '{path}' holds no complete training state to resume from")


def _check_compatible(point: ResumePoint, config: dict) -> None:
    before = _flat(without_keys(point.checkpoint["config"], IGNORED_KEYS))
    now = _flat(without_keys(config, IGNORED_KEYS))
    changed = sorted(key for key in before.keys() | now.keys() if before.get(key) != now.get(key))
    model_changes = [key for key in changed if key.startswith("model.")]
    if model_changes:
        key = model_changes[0]
        raise UserError(
            f"trainer.resume: {key}={now.get(key)!r} differs from the checkpoint's {before.get(key)!r} "
            f"('{point.path}'); resume with the run's model settings"
        )
    planned = [key for key in changed if key.startswith(PLAN_KEYS)]
    if planned:
        log.info("resuming with this run's %s", ", ".join(f"{key}={now.get(key)!r}" for key in planned))
    if changed := [key for key in changed if key not in planned]:
        log.warning("resuming with settings that differ from the checkpoint's (this run's apply): %s", ", ".join(changed))


def resume_command(task_overrides: list[str], run_dir: Path, launcher: list[str] | None = None) -> str:
    """The command line that resumes this run (`launcher`: the torchrun command that started it)."""
    kept = [o for o in task_overrides if not o.lstrip("+~").startswith("trainer.resume=")]
    return shlex.join([*(launcher or ["python", "-m", "gpt2exp.train"]), *kept, f"trainer.resume={run_dir}"])
