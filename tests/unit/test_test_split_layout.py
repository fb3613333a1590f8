"""`trainer.test` scores the test split through the inference layout `gpt2exp.eval` uses
(`inference.layout`, `inference.weights` on train too): the same loss as eval of the run's
checkpoint, in any layout; a LoRA model merged first; a layout this machine cannot take refused
before training; a run resumed whatever its `inference.*`. In-process (plan_run + run_training):
a tiny model, two steps."""

from pathlib import Path

import pytest
import torch
from helpers import TINY

from gpt2exp.cli import entrypoint as cli
from gpt2exp.config import InferenceConfig, LoraConfig, ModelConfig, TrainConfig, plain
from gpt2exp.devices import FP32
from gpt2exp.errors import UserError
from gpt2exp.evaluation.sliding_windows import default_stride, score_text
from gpt2exp.modeling import inference_layout
from gpt2exp.modeling.inference_layout import PackedLinear, packing_works, to_inference_layout
from gpt2exp.modeling.lora import apply_lora
from gpt2exp.modeling.model import GPTModel
from gpt2exp.modeling.trained import load_trained_model
from gpt2exp.runs.layout import RunLayout
from gpt2exp.runs.tracking import NullTracker
from gpt2exp.tokenizer import get_encoding
from gpt2exp.training import run as training_run
from gpt2exp.training.resume import config_fingerprint
from gpt2exp.training.run import RunContext, plan_run, run_training

TEST_SPLIT = " = Foxes = \n" + " The lazy dog sleeps while the quick brown fox jumps . \n" * 60
needs_packing = pytest.mark.skipif(not packing_works(), reason="this PyTorch build lacks oneDNN's packed Linear")


@pytest.fixture
def wikitext(tmp_path) -> Path:
    folder = tmp_path / "wikitext-2"
    folder.mkdir()
    for split in ("train", "valid"):
        (folder / f"wiki.{split}.tokens").write_text(" = Foxes = \n" + " The quick brown fox jumps . \n" * 300)
    (folder / "wiki.test.tokens").write_text(TEST_SPLIT)
    return folder


def run_in_process(compose_train, wikitext: Path, run_dir: Path, *overrides: str) -> dict:
    """A tiny fp32 run on the local WikiText folder, through plan_run and run_training; its summary."""
    cfg = cli.typed(compose_train(*TINY, "data=wikitext2", f"data.local_dir={wikitext}", "trainer.max_steps=2",
                                  "trainer.precision=fp32", "trainer.device=cpu", "logger=none", *overrides),
                    TrainConfig)
    ctx = RunContext(run_dir, run_dir.parent, resume_command="python -m gpt2exp.train")
    torch.manual_seed(cfg.seed)
    return run_training(cfg, plan_run(cfg, ctx), ctx, NullTracker(), None)


def eval_loss(run_dir: Path, layout: str) -> float:
    """The test split's mean NLL as `python -m gpt2exp.eval ckpt=<run_dir> eval.split=test` scores it
    (its defaults: fp32, 4 windows at once), the checkpoint laid out in `layout`."""
    model, _ = load_trained_model(RunLayout.last_checkpoint(run_dir))
    model = to_inference_layout(model.eval(), FP32, use="score", settings=InferenceConfig(layout=layout))
    token_ids = torch.tensor(get_encoding().encode(TEST_SPLIT, allowed_special="all"))
    return score_text(model, token_ids, stride=default_stride(model.cfg.context_length), batch_size=4).mean_nll


@needs_packing
def test_the_test_split_scores_in_the_forced_layout_as_eval_scores_the_checkpoint(compose_train, wikitext, tmp_path,
                                                                                   monkeypatch):
    scored_layers = []
    real_score_text = training_run.score_text

    def recording_score_text(model, *args, **kwargs):
        scored_layers.append({type(module) for module in model.blocks.modules()})
        return real_score_text(model, *args, **kwargs)

    monkeypatch.setattr(training_run, "score_text", recording_score_text)
    summary = run_in_process(compose_train, wikitext, tmp_path / "run", "inference.layout=packed")
    [layers] = scored_layers
    assert PackedLinear in layers and torch.nn.Linear not in layers
    assert summary["test/loss"] == pytest.approx(eval_loss(tmp_path / "run", "packed"), abs=1e-6)
    assert summary["test/loss"] == pytest.approx(eval_loss(tmp_path / "run", "linear"), abs=1e-4)


@needs_packing
def test_a_lora_model_is_merged_then_scored_in_the_packed_layout():
    """peft's Linear layers reach into their base layer's weight, which a packed layer lacks: the
    test split scores the merged model (as eval loads a LoRA checkpoint), with the adapters' effect."""
    torch.manual_seed(0)
    cfg = ModelConfig(context_length=32, emb_dim=32, n_heads=2, n_layers=1, drop_rate=0.0, init="base",
                      lora=LoraConfig(rank=4))
    model = apply_lora(GPTModel(cfg), {"init": "base", "sha256": "0" * 64})
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if ".lora_B." in name:
                weight.normal_()
    token_ids = torch.tensor(get_encoding().encode(TEST_SPLIT, allowed_special="all"))
    as_trained = score_text(model, token_ids, stride=32).mean_nll
    test = training_run._score_test(TEST_SPLIT, model, FP32, InferenceConfig(layout="packed"), NullTracker(), 2,
                                    progress=False)
    assert test["test/loss"] == pytest.approx(as_trained, abs=1e-4)


@pytest.mark.parametrize(("overrides", "message"), [
    (["inference.layout=packed"], "inference.layout=packed: this PyTorch build lacks oneDNN's packed Linear"),
    (["inference.weights=bf16"], "inference.weights=bf16 needs a CPU with native bf16"),
])
def test_a_layout_this_machine_cannot_take_is_refused_before_training(compose_train, wikitext, tmp_path,
                                                                      monkeypatch, overrides, message):
    monkeypatch.setattr(inference_layout, "packing_works", lambda dtype=torch.float32: False)
    with pytest.raises(UserError, match=message):
        run_in_process(compose_train, wikitext, tmp_path / "run", *overrides)
    assert not (tmp_path / "run" / RunLayout.CHECKPOINTS).exists()


def test_bf16_weights_with_a_layout_other_than_packed_are_refused_before_training(compose_train, wikitext, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setattr(inference_layout, "packing_works", lambda dtype=torch.float32: True)
    with pytest.raises(UserError, match="inference.layout=transposed is not allowed with inference.weights=bf16"):
        run_in_process(compose_train, wikitext, tmp_path / "run", "inference.weights=bf16", "inference.layout=transposed")


def test_without_a_test_split_the_layout_is_not_checked(compose_train, text_file, tmp_path, monkeypatch):
    monkeypatch.setattr(inference_layout, "packing_works", lambda dtype=torch.float32: False)
    cfg = cli.typed(compose_train(*TINY, "data=text", f"data.path={text_file}", "trainer.device=cpu", "logger=none",
                                  "inference.layout=packed"), TrainConfig)
    plan = plan_run(cfg, RunContext(tmp_path / "run", tmp_path, resume_command="python -m gpt2exp.train"))
    assert plan.test_text is None


def test_a_run_resumes_whatever_its_inference_keys():
    """`inference.*` only lays out the end-of-run scoring: a checkpoint written with other values,
    or before the keys existed, is this run's (trainer.resume=auto finds it)."""
    resolved = plain(TrainConfig(model=ModelConfig(context_length=32, emb_dim=32, n_heads=2, n_layers=1)))
    forced = {**resolved, "inference": {"layout": "packed", "weights": "fp32"}}
    older = {key: value for key, value in resolved.items() if key != "inference"}
    assert config_fingerprint(forced) == config_fingerprint(resolved) == config_fingerprint(older)
