"""The CPU cores of a multirun whose jobs run at once on this machine (`hydra/launcher=joblib`
or `submitit_local`).

joblib limits each worker's threads to ``cores // n_jobs``, counting the workers it may start,
not the jobs it is given, and whatever OMP_NUM_THREADS says: under the default ``n_jobs=-1`` (a
worker per core) a sweep of two jobs on 16 cores ran each job on one thread. submitit's local
launcher starts every job at once, each taking every core: two such jobs on 2 cores spin against
each other (two 50-step runs: 66 s, against 29.5 s with one thread each). `ShareCores` works out
each job's share before the launcher starts (the cores over the jobs that compute at once, or
OMP_NUM_THREADS where the user set it) and hands it to the jobs, which take it (`take_share`).
In a decoding sweep of a training run the jobs reuse one model: one trains, on every core, the
others wait for it and then sample, a short while in which they share the cores less well.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from gpt2exp.training.reuse import NOT_TRAINING

log = logging.getLogger("gpt2exp.cli")
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
JOB_THREADS = "GPT2EXP_JOB_THREADS"  # each job's PyTorch threads, from the sweep's process to its jobs
LOCAL_LAUNCHERS = ("joblib", "submitit_launcher.LocalLauncher")  # in their _target_: jobs on this machine


def jobs_at_once(hydra_cfg: DictConfig, cores: int, shared: tuple[str, ...] = ()) -> int | None:
    """How many jobs of a multirun under a local launcher compute at the same time: the jobs the
    sweeper hands over at once (Hydra's basic sweeper: its sweeps' combinations, in batches of
    `max_batch_size`; Optuna's: its `n_jobs`), under joblib at most its `n_jobs` (joblib's: -1 is a
    worker per core, -2 one fewer, ...). Sweeps of the `shared` keys do not count (jobs that differ
    in them reuse one trained model: all but one wait for it). None where that is not known
    (another sweeper, or a sweep that is no list of values, such as ``glob(*)``)."""
    workers = None  # submitit's local launcher: every job it is handed
    if "joblib" in str(hydra_cfg.launcher.get("_target_", "")):
        n_jobs = hydra_cfg.launcher.get("n_jobs") or 1
        workers = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)
    sweeper = hydra_cfg.sweeper
    if sweeper.get("_target_") == BASIC_SWEEPER:
        batch = _combinations(list(hydra_cfg.overrides.task), sweeper.get("params") or {}, shared)
        batch = batch and min(batch, sweeper.get("max_batch_size") or batch)
    else:
        batch = sweeper.get("n_jobs")
    if not isinstance(batch, int) or batch < 1:
        return None
    return batch if workers is None else min(workers, batch)


def _combinations(overrides: list[str], params: dict, shared: tuple[str, ...]) -> int | None:
    """The jobs of Hydra's basic sweep: the product of its sweeps' lengths, those of `shared`
    keys left out (None: a sweep that is not a list)."""
    arguments = [f"{key}={value}" for key, value in params.items()] + overrides
    jobs = 1
    try:
        for override in OverridesParser.create().parse_overrides(arguments):
            key = override.key_or_group
            if override.is_sweep_override() and not any(key == k or key.startswith(k + ".") for k in shared):
                jobs *= len(list(override.sweep_string_iterator()))
    except HydraException:  # a glob, or an interval (which only an optimizing sweeper samples)
        return None
    return jobs


class ShareCores(Callback):
    """At the start of a multirun under a local launcher: each job's PyTorch threads
    (`JOB_THREADS`), the cores over the jobs that run at once, or OMP_NUM_THREADS where set; said
    in one line."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not any(name in str(config.hydra.launcher.get("_target_", "")) for name in LOCAL_LAUNCHERS):
            return
        if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
            threads, why = int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
        else:
            cores = usable_cores()
            # A training sweep's jobs that differ in decoding or logging reuse one model (training.reuse).
            jobs = jobs_at_once(config.hydra, cores, NOT_TRAINING if "trainer" in config else ())
            if jobs is None:
                return
            threads, why = max(1, cores // jobs), f"{cores} cores over {jobs} job{'s' * (jobs != 1)} computing at once"
        os.environ[JOB_THREADS] = str(threads)
        log.info("%d PyTorch thread%s for each job (%s)", threads, "s" * (threads != 1), why)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ.pop(JOB_THREADS, None)


def usable_cores() -> int:
    """The cores this process may use: joblib's count (a container's CPU quota included) where
    joblib is installed, else its CPU affinity."""
    try:
        from joblib import cpu_count
    except ImportError:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cpu_count()


def take_share() -> None:
    """In a job of a multirun: the PyTorch threads `ShareCores` gave it, if any (said in its log)."""
    if JOB_THREADS in os.environ:
        import torch

        torch.set_num_threads(int(os.environ[JOB_THREADS]))
        log.info("PyTorch threads: %d (this job's share of the cores)", torch.get_num_threads())
