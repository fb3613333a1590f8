"""Standard tasks (HellaSwag, LAMBADA, a user's own task YAMLs) through lm-evaluation-harness,
scored by gpt2exp's model (`harness_model.GPT2ExpLM`). The harness (the ``tasks`` extra) is
imported only when tasks run.

A task name the harness does not know, or a hub task whose data cannot be fetched, is a
UserError naming the task before any scoring starts.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from gpt2exp.devices import FP32, Precision
from gpt2exp.errors import UserError
from gpt2exp.modeling.model import GPTModel
from gpt2exp.network import unreachable

HUB_TIMEOUT_S = 5.0
LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow")  # `datasets` builders that read local files


@dataclass
class TaskRequest:
    """Which tasks to run and how; `key` is the config key that named the tasks (for messages)."""

    tasks: list[str]
    num_fewshot: int | None = None
    limit: int | None = None  # examples per task; None: all
    include_path: str | None = None  # a folder of the user's own task YAMLs
    key: str = "eval.tasks"  # the config keys that gave `tasks` and `include_path`, for messages
    include_key: str = "eval.include_path"


def metric_key(task: str, metric: str) -> str:
    """How a task's metric is logged (metrics.jsonl, summary.json, W&B) and compared."""
    return f"tasks/{task}/{metric}"


def prepare(request: TaskRequest) -> Any:
    """The harness's task index for `request`, its names and data checked (UserError otherwise)."""
    manager = task_manager(request)
    _check_data_reachable(manager, request)
    return manager


def run_tasks(model: GPTModel, request: TaskRequest, *, manager: Any = None, batch_size: int = 4,
              precision: Precision = FP32) -> dict:
    """Score `model` on the tasks (`manager`: `prepare`'s, else prepared here); returns what
    eval.json records: the harness version, n-shot, limit, and per task its version, examples
    scored and metrics (each with its stderr)."""
    manager = manager or prepare(request)
    import lm_eval

    from gpt2exp.evaluation.harness_model import GPT2ExpLM

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    was_training = model.training
    model.eval()
    try:
        out = lm_eval.simple_evaluate(
            model=GPT2ExpLM(model, batch_size=batch_size, precision=precision), tasks=list(request.tasks),
            num_fewshot=request.num_fewshot, limit=request.limit, task_manager=manager, log_samples=False,
            bootstrap_iters=1000, verbosity="WARNING",
        )
    except ConnectionError as err:
        raise UserError(f"{request.key}: a task's data could not be fetched ({err}); {_local_hint(request)}") from None
    finally:
        model.train(was_training)
    assert out is not None  # None only on ranks other than 0 of a distributed harness run
    return _summarise(out, request)


def _local_hint(request: TaskRequest) -> str:
    return ("write a task YAML that points at local JSON lines (dataset_path: json, dataset_kwargs: {data_files: "
            f"{{test: <file>}}}}) in a folder and pass {request.include_key}=<folder>")


def task_manager(request: TaskRequest) -> Any:
    """The harness's task index: the user's folder alone when it holds every task (quick to
    build), else with the harness's own tasks; UserError for an unknown task name."""
    include = request.include_path
    if include is not None and not Path(include).expanduser().is_dir():
        raise UserError(f"{request.include_key}={include}: no such folder")
    include = str(Path(include).expanduser()) if include is not None else None
    if include is not None:
        own = _index(include, with_harness_tasks=False)
        if all(name in own.all_tasks for name in request.tasks):
            return own
    manager = _index(include, with_harness_tasks=True)
    known = set(manager.all_tasks)
    for name in request.tasks:
        if name not in known:
            close = difflib.get_close_matches(name, manager.all_tasks, n=5, cutoff=0.6)
            hint = f"close matches: {', '.join(close)}" if close else "no close match (`lm-eval ls tasks` lists them)"
            raise UserError(f"{request.key}: unknown task '{name}'; {hint}")
    return manager


@functools.lru_cache(maxsize=4)
def _index(include_path: str | None, *, with_harness_tasks: bool) -> Any:
    """The harness's task index (building the harness's own takes seconds: once per process)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=with_harness_tasks)


def _check_data_reachable(manager: Any, request: TaskRequest) -> None:
    """A hub task whose data set is neither cached nor reachable: refused before the harness retries for long."""
    hub_tasks = {}
    for name in request.tasks:
        entry = manager.task_index.get(name)
        path = (getattr(entry, "cfg", None) or {}).get("dataset_path")
        if path and path not in LOCAL_BUILDERS and not Path(path).expanduser().exists() and not _cached(path):
            hub_tasks[name] = path
    if not hub_tasks:
        return
    import huggingface_hub

    offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or huggingface_hub.constants.HF_HUB_OFFLINE
    problem = "HF_HUB_OFFLINE is set" if offline else unreachable(huggingface_hub.constants.ENDPOINT, HUB_TIMEOUT_S)
    if problem is not None:
        name, path = next(iter(hub_tasks.items()))
        raise UserError(f"{request.key}: task '{name}' reads the data set {path} from the Hugging Face hub, "
                        f"which is not cached and cannot be fetched ({problem}); {_local_hint(request)}")


def _cached(dataset_path: str) -> bool:
    """Whether `datasets` holds a copy of the hub data set in its cache."""
    import datasets

    return (Path(datasets.config.HF_DATASETS_CACHE) / dataset_path.replace("/", "___")).is_dir()


def _summarise(out: dict, request: TaskRequest) -> dict:
    tasks = {}
    for task, values in out["results"].items():
        # "acc,none" -> "acc"; each filter's own ("exact_match,strict-match" -> "strict-match/exact_match");
        # a stderr the harness cannot give ("N/A") as None
        metrics = {}
        for name, value in values.items():
            metric, comma, filter_name = name.partition(",")
            if comma:
                key = metric if filter_name == "none" else f"{filter_name}/{metric}"
                metrics[key] = float(value) if isinstance(value, (int, float)) else None
        tasks[task] = {
            "version": out.get("versions", {}).get(task),
            "n_shot": out.get("n-shot", {}).get(task),
            "examples": (out.get("n-samples", {}).get(task) or {}).get("effective"),
            "metrics": metrics,
        }
    return {"harness_version": version("lm-eval"), "num_fewshot": request.num_fewshot, "limit": request.limit,
            "tasks": tasks}


def flat_metrics(result: dict) -> dict[str, float]:
    """`run_tasks`'s metrics as ``tasks/<task>/<metric>`` keys (stderrs included)."""
    return {metric_key(task, metric): value for task, entry in result["tasks"].items()
            for metric, value in entry["metrics"].items() if value is not None}
