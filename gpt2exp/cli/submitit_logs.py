"""``hydra/launcher=submitit_local`` and ``slurm``: one line per job, as it is submitted, naming the
file its console output goes to (``<sweep>/.submitit/<job id>/<job id>_0_log.out``; its stderr
beside it, ``.err``). The plugin submits the jobs and waits for them in one call, naming none, so
for the sweep's length the executor's ``map_array`` is wrapped to say where each job went."""

import logging
from collections.abc import Callable, Iterable
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("gpt2exp.sweep")
PLUGIN = "hydra_plugins.hydra_submitit_launcher."


class SubmititJobLogs(Callback):
    """Announces each submitit job's log files in the sweep's console (other launchers: nothing)."""

    def __init__(self) -> None:
        self._restore: Callable[[], None] | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not str(config.hydra.launcher.get("_target_", "")).startswith(PLUGIN):
            return
        import submitit

        executor = submitit.AutoExecutor
        submit = executor.map_array

        def map_array(self: submitit.AutoExecutor, fn: Callable, *iterables: Iterable) -> list:
            jobs = submit(self, fn, *iterables)
            # The plugin maps over (overrides, sweep dir key, job number, job id, Hydra's state).
            for number, job in zip(iterables[2], jobs):
                log.info("\t#%s log: %s (stderr: %s)", number, job.paths.stdout, job.paths.stderr.name)
            return jobs

        executor.map_array = map_array  # type: ignore[method-assign,assignment]
        self._restore = lambda: delattr(executor, "map_array")  # the inherited one again

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._restore is not None:
            self._restore()
            self._restore = None
