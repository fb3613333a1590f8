"""The wait before a run's first useful output: a 1-step training run of the default config
(imports, config, data, the evaluations before and after the step, the checkpoint, the loss plot
and the exit), timed from the command to the process's end; and where one more run's imports
spend their time (``python -X importtime``)."""

import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from gpt2exp.errors import UserError

ONE_STEP_RUN = ("-m", "gpt2exp.train", "trainer.max_steps=1", "logger=none")
# python -X importtime's lines: "import time: <own us> | <with its imports, us> | <indent><module>",
# indented two spaces a level; an unindented one is an import statement the program itself ran.
IMPORT_LINE = re.compile(r"^import time:\s*\d+ \|\s*(\d+) \| ([\w.]+)\s*$", re.MULTILINE)
SHOWN_PACKAGES = 5  # packages named in the import breakdown, the slowest first


def startup_seconds(runs: int, command: Sequence[str] = ONE_STEP_RUN) -> list[float]:
    """Wall seconds of each of `runs` runs of ``python <command> hydra.run.dir=<temporary folder>``,
    one after another, in a temporary folder removed afterwards (the cache folder is the user's, so
    runs after the first find the tokenized corpus there)."""
    with tempfile.TemporaryDirectory(prefix="gpt2exp-startup-") as folder:
        return [_timed_run(command, folder, run)[0] for run in range(runs)]


def import_seconds(command: Sequence[str] = ONE_STEP_RUN) -> tuple[float, dict[str, float]]:
    """(wall seconds, import seconds by package) of one run of the command under ``python -X
    importtime`` (`package_import_seconds`)."""
    with tempfile.TemporaryDirectory(prefix="gpt2exp-startup-") as folder:
        seconds, stderr = _timed_run(("-X", "importtime", *command), folder, 0)
    return seconds, package_import_seconds(stderr)


def package_import_seconds(importtime_output: str) -> dict[str, float]:
    """Seconds that the program's own import statements took (each with the modules it pulled in),
    summed by the top-level package they import, torch._dynamo (which torch.optim imports at its
    first call) apart from torch; the slowest first."""
    by_package: dict[str, float] = {}
    for total_us, module in IMPORT_LINE.findall(importtime_output):
        package = "torch._dynamo" if module.startswith("torch._dynamo") else module.split(".")[0]
        by_package[package] = by_package.get(package, 0.0) + int(total_us) / 1e6
    return dict(sorted(by_package.items(), key=lambda item: -item[1]))


def _timed_run(command: Sequence[str], folder: str, run: int) -> tuple[float, str]:
    """(wall seconds, stderr) of ``python <command> hydra.run.dir=<folder>/run-<run>``; a failed run is a UserError."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *command, f"hydra.run.dir={folder}/run-{run}"], cwd=folder,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"bench startup: `python {' '.join(command)}` exited {done.returncode}: {last}")
    return seconds, done.stderr


def startup_rows(runs: int) -> list[tuple[str, str, float, str]]:
    """The bench table's rows: the median and the fastest of `runs` 1-step runs, then one more
    run under ``python -X importtime``: its wall time, its imports in all and by package."""
    seconds = startup_seconds(runs)
    label = " ".join(ONE_STEP_RUN[1:])
    wall, imports = import_seconds()
    return [("startup", f"{label}, median of {runs}", statistics.median(seconds), "s"),
            ("startup", f"{label}, fastest", min(seconds), "s"),
            ("startup", "one more run under python -X importtime", wall, "s"),
            ("startup", "  its imports", sum(imports.values()), "s"),
            *[("startup", f"  importing {package}", value, "s") for package, value in list(imports.items())[:SHOWN_PACKAGES]]]
