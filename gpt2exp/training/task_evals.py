"""`trainer.eval_tasks`: lm-evaluation-harness tasks scored during training, as build-nanogpt
scores HellaSwag while it trains GPT-2, logged as ``tasks/<task>/<metric>`` against tokens_seen."""

import contextlib
import logging
import random
from collections.abc import Callable, Iterator

import numpy as np
import torch

from gpt2exp.config import TrainConfig, TrainerConfig
from gpt2exp.evaluation.tasks import TaskRequest, flat_metrics, prepare, run_tasks
from gpt2exp.training.trainer import EvalPoint

log = logging.getLogger("gpt2exp.train")


class TaskEvals:
    """``task_evals(point)`` after an evaluation: scores the tasks at the first evaluation, every
    `trainer.eval_tasks_freq` steps (default `eval_freq`) and at the last step; `metrics` holds
    the latest. The task names and data are checked when it is made (UserError)."""

    def __init__(self, cfg: TrainConfig, model, tracker, total_steps: int):
        trainer = cfg.trainer
        self.model, self.tracker, self.batch_size = model, tracker, cfg.data.batch_size
        self.due = tasks_due(trainer, total_steps)
        self.request = TaskRequest(tasks=list(trainer.eval_tasks), limit=trainer.eval_tasks_limit,
                                   include_path=trainer.eval_tasks_include_path, key="trainer.eval_tasks",
                                   include_key="trainer.eval_tasks_include_path")
        self.manager = prepare(self.request)
        self.metrics: dict = {}

    def __call__(self, point: EvalPoint, model=None) -> None:
        """`model`: another than the one given at construction (a sharded run's whole copy)."""
        if not self.due(point.step):
            return
        with preserved_rng():  # the harness seeds the global generators: training's draws stay its own
            result = run_tasks(model or self.model, self.request, manager=self.manager, batch_size=self.batch_size)
        self.metrics = flat_metrics(result)
        self.tracker.log_metrics({**self.metrics, "tokens_seen": point.tokens_seen}, step=point.step)
        log.info("step %5d | %s", point.step, " | ".join(f"{key} {value:.4g}" for key, value in self.metrics.items()
                                                          if not key.endswith("_stderr")))


def tasks_due(trainer: TrainerConfig, total_steps: int) -> Callable[[int], bool]:
    """Whether the tasks are scored at the evaluation after a step: every `trainer.eval_tasks_freq`
    steps (default `eval_freq`; the first evaluation included) and after the last."""
    freq = trainer.eval_tasks_freq or trainer.eval_freq
    return lambda step: step % freq == 0 or step == total_steps


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Python's, NumPy's and torch's (CPU and CUDA) generator states, put back on exit."""
    python, numpy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)
