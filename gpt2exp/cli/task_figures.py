"""A run's lm-evaluation-harness task metrics as compare's columns (``tasks/<task>/<metric>``):
from ``python -m gpt2exp.eval``'s eval.json, or the last value a training run logged
(`trainer.eval_tasks`). Each is a column and a ``--metric``; their stderrs are kept out of the table."""

from gpt2exp.evaluation.tasks import flat_metrics

PREFIX = "tasks/"


def is_task_metric(name: str) -> bool:
    return name.startswith(PREFIX)


def task_figures(metrics: list[dict], evaluation: dict | None) -> dict:
    """{tasks/<task>/<metric>: value}: eval.json's (`evaluation`), else each one's last in `metrics`."""
    if isinstance(evaluation, dict) and isinstance(evaluation.get("tasks"), dict):
        try:
            return flat_metrics(evaluation)
        except (AttributeError, KeyError, TypeError):  # a hand-edited eval.json: read as having none
            return {}
    return {key: value for record in metrics for key, value in record.items() if is_task_metric(key)}


def task_columns(rows: list[dict]) -> list[str]:
    """The task metrics any row has, stderrs left out, in first-seen order; every row gets each
    (None where it lacks it)."""
    keys = list(dict.fromkeys(key for row in rows for key in row if is_task_metric(key)))
    for row in rows:
        for key in keys:
            row.setdefault(key, None)
    return [key for key in keys if not key.endswith("_stderr")]
