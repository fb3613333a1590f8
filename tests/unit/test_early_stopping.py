"""`trainer.early_stopping`: a run whose val loss stops improving ends early, with its final
checkpoint and sample, and says why; resuming it is complete, unless the patience is raised."""

import json

import pytest
import torch
from helpers import TINY, read_jsonl, run_folders

from gpt2exp.cli.entrypoint import typed
from gpt2exp.config import TrainConfig
from gpt2exp.errors import UserError


@pytest.mark.parametrize(("override", "key"), [("trainer.early_stopping.patience=-1", "patience"),
                                               ("trainer.early_stopping.min_delta=-0.1", "min_delta"),
                                               ("trainer.early_stopping.min_delta=inf", "min_delta")])
def test_out_of_range_settings_name_the_key(compose_train, override, key):
    with pytest.raises(UserError, match=f"^trainer.early_stopping.{key}="):
        typed(compose_train(override), TrainConfig)


def test_off_by_default(compose_train):
    early_stopping = typed(compose_train(), TrainConfig).trainer.early_stopping
    assert (early_stopping.patience, early_stopping.min_delta) == (None, 0.0)


def test_a_run_that_stops_improving_stops_with_its_checkpoint_and_resumes_sensibly(run_module, text_file, tmp_path):
    """No val loss is ever 100 below the best (step 0's): with patience 2 and an eval every 2
    steps, the evals at steps 2 and 4 spend it, so a 20-step run ends at step 4."""
    args = [*TINY, "data=text", f"data.path={text_file}", "trainer.max_steps=20", "trainer.eval_freq=2",
            "trainer.early_stopping.patience=2", "trainer.early_stopping.min_delta=100", "logger=none"]
    result = run_module("gpt2exp.train", *args)
    assert result.returncode == 0, result.stderr
    [run_dir] = run_folders(tmp_path)
    [line] = [line for line in result.stdout.splitlines() if "early stopping" in line]
    assert "early stopping at step 4 of 20: 2 evaluations without a val loss below " in line
    assert "(step 0's) minus 100 (trainer.early_stopping.min_delta) (trainer.early_stopping.patience=2)" in line
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"] == 4
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics if "val/loss" in m] == [0, 2, 4]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stopped_early"] is True and summary["steps"] == 4
    assert "gen/nll" in summary  # the final sample is drawn at the early stop, as at a last step
    assert [s["step"] for s in read_jsonl(run_dir / "samples.jsonl")][-1] == 4

    again = run_module("gpt2exp.train", *args, f"trainer.resume={run_dir}")
    assert again.returncode == 0, again.stderr
    assert "is already complete (step 4 of 20, stopped early: raise trainer.early_stopping.patience" in again.stdout
    assert run_folders(tmp_path) == [run_dir]

    longer = run_module("gpt2exp.train", *args, f"trainer.resume={run_dir}", "trainer.early_stopping.patience=3")
    assert longer.returncode == 0, longer.stderr
    [resumed_dir] = [d for d in run_folders(tmp_path) if d != run_dir]
    assert torch.load(resumed_dir / "checkpoints" / "last.pt", weights_only=True)["step"] == 6
    assert [m["step"] for m in read_jsonl(resumed_dir / "metrics.jsonl") if "val/loss" in m] == [0, 2, 4, 6]
    assert "early stopping at step 6 of 20" in longer.stdout
