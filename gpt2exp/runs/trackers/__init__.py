"""The tools a run's metrics go to besides its own files (`logger.wandb`, `logger.tensorboard`,
`logger.csv`): one class per tool, each behind `runs.tracking.Tracker`, each writing under the
run folder. The `Backend` protocol is what the tracker calls.

Imports the leaves and `gpt2exp.runs.layout`."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class Backend(Protocol):
    """One tool's view of a run. Steps only grow, except that metrics may come at the step
    logged last; a sample is {"step", "prompt", "text", "settings"}."""

    def carry_over(self, metrics: list[dict], samples: list[dict]) -> None:
        """A resumed run's records up to its checkpoint, logged by the run it continues; they
        replace whatever the tool holds of this run folder (a resumed W&B run has them)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_sample(self, sample: dict) -> None: ...

    def log_image(self, key: str, path: Path, step: int) -> None: ...

    def summary(self, values: dict) -> None:
        """The run's summary so far (all of it, each call)."""

    def finish(self, exit_code: int) -> None: ...
