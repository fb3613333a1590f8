"""The debug presets (conf/debug/): `debug=fast`, a smoke test of the configured run, and
`debug=overfit`, one batch learned by heart."""

import json

import pytest
import torch
from helpers import TINY, read_jsonl, run_folders

from gpt2exp.cli.entrypoint import typed
from gpt2exp.config import TrainConfig
from gpt2exp.errors import UserError


def test_fast_shrinks_the_run_it_is_given(compose_train):
    cfg = typed(compose_train("debug=fast", "model=small", "data=wikitext2"), TrainConfig)
    trainer = cfg.trainer
    assert (trainer.max_steps, trainer.eval_iter, trainer.test, trainer.keep_best) == (4, 1, False, False)
    assert (trainer.keep_last, trainer.checkpoint_freq, trainer.checkpoint_minutes) == (1, None, None)
    assert (cfg.decoding.max_new_tokens, cfg.decoding.num_samples) == (8, 1)
    assert not (cfg.logger.wandb or cfg.logger.tensorboard or cfg.logger.csv)
    assert (cfg.model.emb_dim, cfg.data.name) == (768, "wikitext-2-raw-v1")  # the run's own model and data


def test_overfit_takes_one_batch_without_dropout_or_decay(compose_train):
    cfg = typed(compose_train("debug=overfit", "experiment=article", "data.path=a.txt"), TrainConfig)
    assert (cfg.trainer.overfit_batches, cfg.trainer.max_steps, cfg.trainer.sample_freq) == (1, 300, 300)
    assert (cfg.model.drop_rate, cfg.optimizer.weight_decay, cfg.optimizer.schedule) == (0.0, 0.0, "constant")
    assert not (cfg.logger.wandb or cfg.logger.tensorboard or cfg.logger.csv)


def test_a_debug_preset_outranks_an_experiment_and_the_command_line_outranks_it(compose_train):
    cfg = typed(compose_train("experiment=article", "data.path=a.txt", "debug=fast", "trainer.max_steps=7"),
                TrainConfig)
    assert (cfg.trainer.epochs, cfg.trainer.max_steps, cfg.trainer.eval_iter) == (10, 7, 1)


def test_overfit_batches_must_be_positive(compose_train):
    with pytest.raises(UserError, match="^trainer.overfit_batches=0 is not allowed"):
        typed(compose_train("trainer.overfit_batches=0"), TrainConfig)


def test_fast_runs_a_few_steps_and_keeps_the_last_checkpoint_only(run_module, text_file, tmp_path):
    result = run_module("gpt2exp.train", *TINY, "data=text", f"data.path={text_file}", "debug=fast")
    assert result.returncode == 0, result.stderr
    [run_dir] = run_folders(tmp_path)
    assert run_dir.relative_to(tmp_path).parts[:2] == ("outputs", "debug")
    assert [m["step"] for m in read_jsonl(run_dir / "metrics.jsonl") if "val/loss" in m] == [0, 2, 4]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.pt", "step-00000004.pt"]
    assert not (run_dir / "wandb").exists()
    [sample] = read_jsonl(run_dir / "samples.jsonl")
    assert sample["prompt"] == "The"  # data=text's own start_context (conf/data/start_context/text.yaml)
    assert "test/loss" not in json.loads((run_dir / "summary.json").read_text())


def test_overfit_learns_its_one_batch_by_heart(run_module, text_file, tmp_path):
    """The tiny model's loss on its one batch falls from ~10.8 to below 0.5 (0.007 measured) in
    60 steps at lr 1e-2."""
    result = run_module("gpt2exp.train", *TINY, "data=text", f"data.path={text_file}", "debug=overfit",
                        "optimizer.lr=1e-2", "trainer.max_steps=60", "trainer.eval_freq=20")
    assert result.returncode == 0, result.stderr
    assert "trainer.overfit_batches=1: training and validating on the same 4 windows" in result.stdout
    [run_dir] = run_folders(tmp_path)
    evals = [m for m in read_jsonl(run_dir / "metrics.jsonl") if "val/loss" in m]
    assert [m["step"] for m in evals] == [0, 20, 40, 60]
    assert evals[0]["train/loss"] > 10 and evals[-1]["train/loss"] < 0.5
    assert evals[-1]["val/loss"] == evals[-1]["train/loss"]  # the same windows
    assert evals[-1]["tokens_seen"] == 60 * 4 * 32  # one batch of 4 windows of 32 tokens a step
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"] == 60
