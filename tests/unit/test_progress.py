"""Progress where a user waits: a bar while training, eval and a run's end-of-run test scoring go,
on a terminal only (a log file or a pipe gets none)."""

import io
import sys

import pytest
import torch
from helpers import SAMPLE_TEXT, TINY_MODEL

from gpt2exp.config import DataConfig, InferenceConfig, InferenceLayout, ModelConfig, OptimizerConfig, TrainerConfig
from gpt2exp.data import build_data
from gpt2exp.devices import FP32
from gpt2exp.evaluation.sliding_windows import score_text
from gpt2exp.modeling.model import GPTModel
from gpt2exp.runs.tracking import NullTracker
from gpt2exp.training.optimizers import make_optimizer
from gpt2exp.training.run import _score_test
from gpt2exp.training.trainer import Trainer


class Terminal(io.StringIO):
    """Stderr as tqdm sees it in a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def model() -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(ModelConfig(**TINY_MODEL)).eval()


@pytest.mark.parametrize(("stream", "drawn"), [(Terminal(), True), (io.StringIO(), False)], ids=["terminal", "pipe"])
def test_eval_draws_a_bar_over_the_tokens_on_a_terminal_only(model, monkeypatch, stream, drawn):
    monkeypatch.setattr(sys, "stderr", stream)
    score = score_text(model, torch.randint(0, 50257, (200,)), stride=16, progress="scoring test")
    assert score.tokens == 199
    assert ("scoring test: 100%" in stream.getvalue() and "199/199" in stream.getvalue()) == drawn
    assert drawn or stream.getvalue() == ""


def test_a_library_call_without_a_label_draws_none(model, monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    score_text(model, torch.randint(0, 50257, (100,)), stride=32)
    assert sys.stderr.getvalue() == ""


@pytest.mark.parametrize(("progress", "drawn"), [(True, True), (False, False)], ids=["own-console", "parallel-jobs"])
def test_a_runs_test_scoring_draws_a_bar_unless_jobs_share_the_console(model, monkeypatch, progress, drawn):
    monkeypatch.setattr(sys, "stderr", Terminal())
    text = "The quick brown fox jumps over the lazy dog. " * 20
    linear = InferenceConfig(layout=InferenceLayout.linear)  # the shared model stays as it is
    result = _score_test(text, model, FP32, linear, NullTracker(), step=4, progress=progress)
    assert result["test/tokens"] > 0
    assert ("scoring test: 100%" in sys.stderr.getvalue()) == drawn, sys.stderr.getvalue()


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("progress")
    (folder / "corpus.txt").write_text(SAMPLE_TEXT, encoding="utf-8")
    return build_data(DataConfig(source="text", path=str(folder / "corpus.txt"), batch_size=4,
                                 cache_dir=str(folder / "cache")), context_length=TINY_MODEL["context_length"])


@pytest.mark.parametrize(("stream", "drawn"), [(Terminal(), True), (io.StringIO(), False)], ids=["terminal", "pipe"])
def test_training_draws_its_bar_on_a_terminal_only(tiny_data, monkeypatch, stream, drawn):
    """`trainer.progress=true` (the default) draws the bar where someone watches: a job's log file
    (a submitit job's .err, a redirect) gets none."""
    monkeypatch.setattr(sys, "stderr", stream)
    model = GPTModel(ModelConfig(**TINY_MODEL))
    cfg = TrainerConfig(max_steps=2, eval_freq=2, eval_iter=1, progress=True)
    Trainer(model, make_optimizer(model, OptimizerConfig()), tiny_data, cfg, device=torch.device("cpu")).fit()
    assert ("train: 100%" in stream.getvalue() and "2/2" in stream.getvalue()) == drawn
    assert drawn or stream.getvalue() == ""
