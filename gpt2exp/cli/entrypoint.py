"""What every Hydra entrypoint shares: each run owns its folder (see `run_folder`); user mistakes
end in one line on stderr and exit 2, taking back only what the run added; in a multirun a
failing job is recorded in its folder and the sweep goes on; W&B run identity."""

import functools
import json
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gpt2exp import collector
from gpt2exp.atomic import write_json_atomic
from gpt2exp.cli import help as key_help
from gpt2exp.cli import parallel_jobs
from gpt2exp.cli.messages import error_message, fail, one_line
from gpt2exp.cli.schema import register_configs
from gpt2exp.config import LoggerConfig
from gpt2exp.errors import AlreadyComplete, UserError
from gpt2exp.runs import folder as run_folder
from gpt2exp.runs.layout import RunLayout
from gpt2exp.runs.tracking import BACKENDS, run_identity

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

# The configs: gpt2exp/conf in an installed wheel, else the checkout's top-level conf/ (a source
# tree or an editable install). An absolute path, so that Hydra reads it as a folder however the
# entrypoint was started (``python -m``, or a console command, for which "../conf" would be
# taken for a package).
CONFIG_DIR = str(next(path for path in (Path(__file__).resolve().parents[1] / "conf",
                                        Path(__file__).resolve().parents[2] / "conf") if path.is_dir()))
log = logging.getLogger("gpt2exp.cli")
T = TypeVar("T", bound="DataclassInstance")


def reports_user_errors(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Wrap a Hydra task function. A ``UserError`` in a single run takes back what the run added
    to its folder (`RunFolder.undo`) and exits 2 with one line. In a multirun any exception fails
    that job only: its folder gets failure.json with the error line, the job returns inf (the
    worst loss for a sweeper) and the sweep goes on; ``FailedJobs`` reports the failures at the
    end. A run with nothing left to do (``AlreadyComplete``) also takes back what it added.

    Jobs of a pool launcher (joblib) run in a child process of the pool's worker: a job that the
    kernel kills (the OOM killer) fails alone instead of breaking the pool and the sweep; it takes
    its share of the CPU cores (`parallel_jobs`)."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig) -> Any:
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN and "joblib" in str(hydra_cfg.launcher.get("_target_")):
            return _in_child_process(functools.partial(attempt, cfg), hydra_cfg)
        return attempt(cfg)

    def attempt(cfg: DictConfig) -> Any:
        hydra_cfg = HydraConfig.get()
        run_dir = Path(hydra_cfg.runtime.output_dir)
        multirun = hydra_cfg.mode == RunMode.MULTIRUN
        folder = run_folder.claimed(run_dir)
        if multirun:
            (run_dir / RunLayout.FAILURE).unlink(missing_ok=True)
            parallel_jobs.take_share()
        try:
            return task(cfg)
        except AlreadyComplete as done:
            log.info("%s", done)
            if folder:
                folder.undo()
            return done.result
        except (UserError, OmegaConfBaseException) as err:
            message = error_message(err)
            if not multirun:
                if folder:
                    folder.undo()
                fail(message)
            return record_failure(run_dir, hydra_cfg.job.num, list(hydra_cfg.overrides.task), message)
        except Exception as err:
            if not multirun:
                raise
            log.exception("job %s failed", hydra_cfg.job.num)
            message = f"{type(err).__name__}: {one_line(err)}"
            return record_failure(run_dir, hydra_cfg.job.num, list(hydra_cfg.overrides.task), message)
        finally:
            if folder:
                folder.release()

    return wrapper


def _in_child_process(job: Callable[[], Any], hydra_cfg: Any) -> Any:
    """`job()` in a forked child (it inherits Hydra's state); a child that dies without a result
    fails the job, with the signal that killed it."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=lambda: send.send(job()), name=f"job-{hydra_cfg.job.num}")
    child.start()
    send.close()
    try:
        return receive.recv()
    except EOFError:  # the child died before sending its result
        pass
    finally:
        child.join()
    code = cast(int, child.exitcode)  # set once join() returned
    cause = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
    run_dir = Path(hydra_cfg.runtime.output_dir)
    return record_failure(run_dir, hydra_cfg.job.num, list(hydra_cfg.overrides.task), f"job process {cause}")


def record_failure(run_dir: Path, job: int, overrides: list[str], message: str) -> float:
    """failure.json in the job's folder; returns inf, the job's score for a sweeper."""
    log.error("error: %s", message)
    record = {"status": "failed", "job": job, "overrides": overrides, "error": message}
    write_json_atomic(run_dir / RunLayout.FAILURE, record)
    return float("inf")


class OwnRunFolders(Callback):
    """Before Hydra writes anything: make and lock the run folder (a single run) or the sweep
    folder (a multirun), so that a second run aimed at it, or at an earlier run that it does not
    continue, stops with one line (exit 2) before touching a file. (Hydra turns a callback's
    exceptions into warnings, so this exits itself.)"""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._claim(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._claim(config, "hydra.sweep.dir")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        run_folder.release_all()

    @staticmethod
    def _claim(config: DictConfig, key: str) -> None:
        """Rank 0 claims the folder (a distributed job's is rank 0's); the other ranks wait for
        it (Hydra then finds the folder made) and stop with its line if it could not. Without a
        process group (none joined yet: no torch imported) the process claims it alone."""

        def claim() -> None:
            HydraConfig.instance().set_config(config)  # for ${hydra:...} in the folder's pattern
            path = os.path.abspath(str(OmegaConf.select(config, key)))  # `now` is cached: Hydra gets this name
            resume = OmegaConf.select(config, "trainer.resume", default=None)
            continues = resume == "auto" or (resume is not None and os.path.abspath(os.path.expanduser(resume)) in (
                path, os.path.join(path, RunLayout.CHECKPOINTS)))
            run_folder.claim(path, key=key, may_continue=continues)

        try:
            if "gpt2exp.training.distributed" in sys.modules:  # a job's process group lives there
                from gpt2exp.training import distributed

                distributed.main_decides(claim)
            else:
                claim()
        except UserError as err:
            fail(error_message(err))


class FailedJobs(Callback):
    """At the end of a multirun: one line naming the failed jobs, and exit status 1 if any."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = {p.parent for p in [*sweep_dir.rglob(RunLayout.HYDRA), *sweep_dir.rglob(RunLayout.FAILURE)]}
        failures = sorted((json.loads((job / RunLayout.FAILURE).read_text()) for job in jobs
                           if (job / RunLayout.FAILURE).is_file()), key=lambda f: f["job"])
        if failures:
            numbers = ", ".join(str(f["job"]) for f in failures)
            print(
                f"error: {len(failures)} of {len(jobs)} jobs failed (job {numbers}; {RunLayout.FAILURE} in each "
                f"job's folder under {sweep_dir}); job {failures[0]['job']}: {failures[0]['error']}",
                file=sys.stderr,
            )
            sys.exit(1)


def typed(cfg: DictConfig, schema: type[T]) -> T:
    """The composed config as its dataclass (``OmegaConf.to_object``, which runs each section's
    checks); first refuses keys that ``+key=value`` added to a typed section, and NUL characters
    (no path or name holds one)."""
    for section in fields(schema):
        if is_dataclass(section.type) and isinstance(cfg.get(section.name), DictConfig):
            allowed = {f.name for f in fields(section.type)}
            for key in cfg[section.name]:
                if key not in allowed:
                    raise UserError(f"{section.name}.{key}={cfg[section.name][key]!r} is not allowed: unknown key")
    for key, text in _strings(OmegaConf.to_container(cfg, resolve=True), ""):
        if "\x00" in text:
            raise UserError(f"{key}={text!r} is not allowed: must not contain a NUL character")
    return cast(T, OmegaConf.to_object(cfg))


def _strings(value: Any, key: str):
    """(dotted key, string) for every string in a config value, lists and sections included."""
    if isinstance(value, dict):
        for name, item in value.items():
            yield from _strings(item, f"{key}.{name}".lstrip("."))
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, key)
    elif isinstance(value, str):
        yield key, value


def tracker_options(logger_cfg: LoggerConfig, hydra_cfg: Any = None) -> dict:
    """`Tracker` keyword arguments from a `logger` config section and Hydra's runtime state:
    in a multirun the group defaults to the sweep's, the name to the job's overrides, and the
    tags gain the chosen config options (see `tracking.run_identity`)."""
    hydra_cfg = hydra_cfg or HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    swept = sweep_keys(hydra_cfg) if multirun else set()
    identity = run_identity(
        group=logger_cfg.group,
        name=logger_cfg.name,
        tags=list(logger_cfg.tags),
        sweep_dir=hydra_cfg.sweep.dir if multirun else None,
        overrides=list(hydra_cfg.overrides.task) if multirun else (),
        swept=swept,
        choices=dict(hydra_cfg.runtime.choices),
    )
    return {"backends": [name for name in BACKENDS if getattr(logger_cfg, name)], "mode": str(logger_cfg.mode),
            "project": logger_cfg.project, "entity": logger_cfg.entity, "swept": sorted(swept), **identity}


def sweep_keys(hydra_cfg: Any) -> set[str]:
    """The keys a multirun varies: its sweeper's `params` and the sweep overrides it was
    launched with (`key=a,b`, `range(...)`, ...), read back from the sweep's multirun.yaml."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = set(hydra_cfg.sweeper.get("params") or {})
    try:
        launched = OmegaConf.load(Path(hydra_cfg.sweep.dir) / "multirun.yaml").hydra.overrides.task
        parsed = OverridesParser.create().parse_overrides(list(launched))
    except (OSError, HydraException, OmegaConfBaseException):
        return keys
    return keys | {override.key_or_group for override in parsed if override.is_sweep_override()}


def hydra_command(config_name: str, task: Callable[[DictConfig], Any]) -> Callable[[], None]:
    """A console command: Hydra composes ``conf/<config_name>.yaml`` from the command line (its
    schema, the presets and the resolvers registered first) and runs `task` on it through
    `reports_user_errors`; a config that fails to compose exits 2 with one line."""
    register_configs()
    key_help.register()
    hydra_main = hydra.main(config_path=CONFIG_DIR, config_name=config_name, version_base="1.3")(
        reports_user_errors(task))

    def command() -> None:
        collector.skip_exit_collections()
        os.environ["HYDRA_FULL_ERROR"] = "1"  # let composition errors reach us instead of Hydra's printer
        try:
            hydra_main()
        except (HydraException, OmegaConfBaseException, UserError) as err:
            fail(error_message(err))
        except BrokenPipeError:  # the reader went away (`--help | head`): stop quietly, as the Python docs advise
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except KeyboardInterrupt:  # before training took over Ctrl-C (see `interrupt`)
            print("error: interrupted", file=sys.stderr, flush=True)
            run_folder.release_all()
            sys.stdout.flush()
            os._exit(130)  # now: W&B's exit hooks wait minutes for a run that a slow host never started
        finally:
            run_folder.release_all()

    command.__doc__ = f"The ``gpt2exp-{config_name}`` console command (``python -m gpt2exp.{config_name}``)."
    return command
