"""`trainer.eval_tasks`: harness tasks scored in the training loop at the configured steps, and a
resumed run scores what the uninterrupted run scores."""

import pytest
import torch
from helpers import TINY_MODEL
from helpers.tasks import MC_TASK, write_tasks

from gpt2exp.config import DataConfig, ModelConfig, OptimizerConfig, TrainConfig, TrainerConfig
from gpt2exp.data import build_data
from gpt2exp.errors import UserError
from gpt2exp.modeling.model import GPTModel
from gpt2exp.training.optimizers import make_optimizer
from gpt2exp.training.task_evals import TaskEvals
from gpt2exp.training.trainer import EvalPoint, Hooks, Trainer, TrainState

TASK_METRICS = {f"tasks/{MC_TASK}/{name}" for name in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")}


class Logged:
    """A tracker that keeps what it is given."""

    def __init__(self):
        self.records: list[tuple[int, dict]] = []

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.records.append((step, metrics))


def config(tmp_path, task_folder, steps: int) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(**TINY_MODEL), optimizer=OptimizerConfig(lr=3e-3, warmup_steps=0),
        data=DataConfig(source="text", path=str(tmp_path / "corpus.txt"), batch_size=4, cache_dir=str(tmp_path / "c")),
        trainer=TrainerConfig(max_steps=steps, eval_freq=2, eval_iter=1, progress=False, eval_tasks=[MC_TASK],
                              eval_tasks_limit=2, eval_tasks_freq=4, eval_tasks_include_path=str(task_folder)),
    )


def train(cfg: TrainConfig, data, tracker: Logged, *, model=None, optimizer=None, state=None):
    """Train to `cfg.trainer.max_steps`, scoring the tasks after evaluations; returns the model, the
    optimizer, the state, the TaskEvals and whether every scoring left torch's RNG as it found it."""
    if model is None:
        torch.manual_seed(0)
        model = GPTModel(cfg.model)
        optimizer = make_optimizer(model, cfg.optimizer)
    task_evals = TaskEvals(cfg, model, tracker, total_steps=cfg.trainer.max_steps)
    rng_kept = []

    class ScoreTasks(Hooks):
        def on_eval(self, point: EvalPoint, extra: dict) -> None:
            before = torch.get_rng_state()
            task_evals(point)
            rng_kept.append(torch.equal(before, torch.get_rng_state()))

    state = Trainer(model, optimizer, data, cfg.trainer, ScoreTasks(), device=torch.device("cpu"), state=state).fit()
    return model, optimizer, state, task_evals, all(rng_kept)


def test_tasks_are_scored_at_the_configured_steps_and_a_resumed_run_scores_them_as_the_uninterrupted_run(
        tmp_path, text_file):
    (tmp_path / "corpus.txt").write_text(text_file.read_text())
    cfg = config(tmp_path, write_tasks(tmp_path / "tasks"), steps=6)
    data = build_data(cfg.data, context_length=32, seed=0)
    straight = Logged()
    *_, task_evals, rng_kept = train(cfg, data, straight)
    assert [step for step, _ in straight.records] == [0, 4, 6]  # the first evaluation, every 4 steps, the last
    assert all(set(metrics) == TASK_METRICS | {"tokens_seen"} for _, metrics in straight.records)
    assert [metrics["tokens_seen"] for _, metrics in straight.records] == [0, 4 * 4 * 32, 6 * 4 * 32]
    assert task_evals.metrics == {key: straight.records[-1][1][key] for key in TASK_METRICS}  # summary.json's
    assert rng_kept  # the harness seeds the global generators; training's own draws are put back

    first, rest = Logged(), Logged()
    cfg.trainer.max_steps = 4
    model, optimizer, state, *_ = train(cfg, data, first)
    resumed = GPTModel(cfg.model)
    resumed.load_state_dict(model.state_dict())
    resumed_optimizer = make_optimizer(resumed, cfg.optimizer)
    resumed_optimizer.load_state_dict(optimizer.state_dict())
    cfg.trainer.max_steps = 6
    train(cfg, data, rest, model=resumed, optimizer=resumed_optimizer, state=TrainState.from_dict(state.to_dict()))
    assert first.records + rest.records == straight.records


def test_eval_tasks_freq_must_be_a_multiple_of_eval_freq():
    with pytest.raises(UserError, match=r"^trainer.eval_tasks_freq=3 is not allowed: must be a multiple of "
                                        r"trainer.eval_freq=2"):
        TrainerConfig(eval_freq=2, eval_tasks=["hellaswag"], eval_tasks_freq=3)
