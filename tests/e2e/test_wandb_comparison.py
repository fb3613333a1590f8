"""What W&B receives for comparing runs, read back from the offline run files: metrics against
tokens seen with min/last summaries, short config keys for what a sweep varies, and models as
artifacts."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY
from helpers.wandb_reader import find_wandb_file, read_run


def train(tmp_path: Path, text_file: Path, *args: str, flag: tuple[str, ...] = (),
          env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gpt2exp.train", *flag, *TINY, "data=text", f"data.path={text_file}",
         "trainer.max_steps=6", "trainer.eval_freq=2", "trainer.eval_iter=1", "decoding.max_new_tokens=4", *args],
        cwd=tmp_path, env=env or dict(os.environ), capture_output=True, text=True, timeout=300,
    )


def test_context_sweep_runs_plot_against_tokens_seen_with_min_and_last_summaries(tmp_path, text_file):
    result = train(tmp_path, text_file, "model.context_length=16,32", "hydra.sweep.dir=sweep", flag=("-m",))
    assert result.returncode == 0, result.stderr
    runs = [read_run(find_wandb_file(tmp_path / "sweep" / job)) for job in ("0", "1")]
    for run, context in zip(runs, (16, 32)):
        metrics = run["metrics"]
        assert all(metrics[name]["step_metric"] == "tokens_seen"
                   for name in ("train/*", "val/*", "lr", "gen/*", "epoch", "val/loss"))
        assert metrics["val/loss"]["summary"] == ["min", "last"] == metrics["val/perplexity"]["summary"]
        assert metrics["tokens_per_sec"]["summary"] == ["mean"]
        val = [row["val/loss"] for row in run["history"] if "val/loss" in row]
        assert run["summary"]["val/loss"] == {"min": min(val), "last": val[-1]}
        assert all("tokens_seen" in row for row in run["history"] if "train/batch_loss" in row)
        assert max(row.get("tokens_seen", 0) for row in run["history"]) == 6 * 4 * context  # 6 steps, 4 windows
        assert any("gen/nll" in row and row["tokens_seen"] == 6 * 4 * context for row in run["history"])
        # The swept key, short and at the top level, beside the nested config.
        assert run["config"]["context_length"] == context == run["config"]["model"]["context_length"]
        assert run["name"] == f"model.context_length={context}"
    assert not [a for a in runs[0]["artifacts"] if a["type"] == "model"]  # logger.log_model=false by default


def test_log_model_puts_best_and_last_checkpoints_in_the_offline_run(tmp_path, text_file):
    """The files the artifact uploads stay in the run folder, and hold the checkpoints as they
    were when logged; W&B stages nothing under the home folder."""
    home = tmp_path / "home"
    home.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("XDG_")} | {"HOME": str(home)}
    result = train(tmp_path, text_file, "logger.log_model=all", "hydra.run.dir=run", env=env)
    assert result.returncode == 0, result.stderr
    run = read_run(find_wandb_file(tmp_path / "run"))
    staged = [Path(local) for artifact in run["artifacts"] if artifact["type"] == "model"
              for local in artifact["files"].values()]
    assert len(staged) == 2 and all(path.is_relative_to(find_wandb_file(tmp_path / "run").parent) for path in staged)
    assert [(p.parent.name, p.name) for p in staged] == [("best", "best.pt"), ("latest", "step-00000006.pt")]
    for path in staged:
        assert path.read_bytes() == (tmp_path / "run" / "checkpoints" / path.name).read_bytes()
    assert not [p for p in home.rglob("*") if p.is_file() and p.stat().st_size > 100_000], "a checkpoint under home"
    models = [artifact for artifact in run["artifacts"] if artifact["type"] == "model"]
    by_alias = {alias: artifact for artifact in models for alias in artifact["aliases"]}
    assert set(by_alias) == {"best", "latest"}
    assert len(models) == 2 and all(a["name"] == f"model-{run['run_id']}" for a in models)
    best, latest = by_alias["best"], by_alias["latest"]
    assert latest["metadata"]["step"] == 6 and "val_loss" in best["metadata"]
    [(name, local)] = best["files"].items()
    assert name == "best.pt" and torch.load(local, weights_only=True)["optimizer"] is None  # weights only
    [(name, local)] = latest["files"].items()
    assert name == "step-00000006.pt" and torch.load(local, weights_only=True)["optimizer"] is not None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["logger.log_model=sometimes"], "logger.log_model='sometimes' is not allowed: one of false, best, last, all"),
        (["logger.log_model=best", "trainer.keep_best=false"],
         "logger.log_model='best' is not allowed: needs trainer.keep_best=true (best.pt is the checkpoint it logs"),
        (["logger.log_model=all", "trainer.keep_best=false"], "logger.log_model='all' is not allowed: needs "),
    ],
    ids=["unknown", "best_without_best_pt", "all_without_best_pt"],
)
def test_a_log_model_value_it_cannot_honour_exits_2(tmp_path, text_file, overrides, message):
    """best (and all) log best.pt: without trainer.keep_best there is none, so the run would
    train to the end and log no best model."""
    result = train(tmp_path, text_file, *overrides)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and message in line, line
    assert not (tmp_path / "outputs").exists()
