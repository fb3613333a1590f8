"""The wait before a run's first useful output: a 1-step training run of the default config
(imports, config, data, the evaluations before and after the step, the checkpoint, the loss plot
and the exit), timed from the command to the process's end."""

import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from gpt2exp.errors import UserError

ONE_STEP_RUN = ("-m", "gpt2exp.train", "trainer.max_steps=1", "logger=none")


def startup_seconds(runs: int, command: Sequence[str] = ONE_STEP_RUN) -> list[float]:
    """Wall seconds of each of `runs` runs of ``python <command> hydra.run.dir=<temporary folder>``,
    one after another, in a temporary folder removed afterwards (the cache folder is the user's, so
    runs after the first find the tokenized corpus there)."""
    seconds = []
    with tempfile.TemporaryDirectory(prefix="gpt2exp-startup-") as folder:
        for run in range(runs):
            start = time.perf_counter()
            done = subprocess.run([sys.executable, *command, f"hydra.run.dir={folder}/run-{run}"], cwd=folder,
                                  capture_output=True, text=True)
            seconds.append(time.perf_counter() - start)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise UserError(f"bench startup: `python {' '.join(command)}` exited {done.returncode}: {last}")
    return seconds


def startup_rows(runs: int) -> list[tuple[str, str, float, str]]:
    """The bench table's rows: the median and the fastest of `runs` 1-step runs."""
    seconds = startup_seconds(runs)
    label = " ".join(ONE_STEP_RUN[1:])
    return [("startup", f"{label}, median of {runs}", statistics.median(seconds), "s"),
            ("startup", f"{label}, fastest", min(seconds), "s")]
