"""End-to-end runs through ``python -m gpt2exp.train`` in subprocesses."""

import math

import pytest
import torch
from helpers import TINY, read_jsonl, run_folders
from helpers.wandb_reader import find_wandb_file, read_run


def test_tiny_run_trains_logs_and_checkpoints(run_module, text_file, tmp_path):
    result = run_module(
        "gpt2exp.train", *TINY, "data=text", f"data.path={text_file}",
        "trainer.max_steps=40", "trainer.eval_freq=10", "trainer.sample_freq=20", "optimizer.lr=3e-3",
    )
    assert result.returncode == 0, result.stderr
    [run_dir] = run_folders(tmp_path)

    evals = [m for m in read_jsonl(run_dir / "metrics.jsonl") if "val/loss" in m]
    assert [m["step"] for m in evals] == [0, 10, 20, 30, 40]
    assert evals[0]["val/loss"] > math.log(50257) - 0.5
    assert evals[-1]["val/loss"] < evals[0]["val/loss"] - 3
    assert evals[-1]["val/perplexity"] == pytest.approx(math.exp(evals[-1]["val/loss"]))
    assert evals[-1]["tokens_seen"] == 40 * 4 * 32

    samples = read_jsonl(run_dir / "samples.jsonl")
    assert [s["step"] for s in samples] == [20, 40]
    assert all(s["text"].startswith(s["prompt"]) for s in samples)
    assert "step    40" in result.stdout and "sample @ step 40" in result.stdout

    assert (run_dir / "loss.png").stat().st_size > 0
    checkpoint = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["step"] == 40 and checkpoint["config"]["model"]["emb_dim"] == 32

    run = read_run(find_wandb_file(run_dir))
    logged = [(row["_step"], row["val/loss"]) for row in run["history"] if "val/loss" in row]
    assert logged == [(m["step"], m["val/loss"]) for m in evals]
    assert run["config"]["model"]["emb_dim"] == 32 and run["config"]["data"]["path"] == str(text_file)
    table = run["tables"]["samples"]
    assert table["columns"][:3] == ["step", "prompt", "text"] and len(table["data"]) == 2
    assert run["exit_code"] == 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.n_heads=5", "model.n_heads=5 is not allowed: must divide model.emb_dim=32"),
        ("optimizer.lr=-1", "optimizer.lr=-1.0 is not allowed: must be > 0"),
        ("trainer.max_steps=0", "trainer.max_steps=0 is not allowed"),
        ("model.emb_dim=abc", "model.emb_dim=abc"),
        ("model.n_head=4", "model.n_head"),
        ("model=huge", "model/huge"),
        ("decoding.max_new_tokens=1000000000", "decoding.max_new_tokens=1000000000 is not allowed: must be in [1, "),
        ("logger.project=x/y", "logger.project='x/y' is not allowed"),
        ("data.path=/dev/zero", "data.path: not a regular file or folder (a device, pipe or socket): '/dev/zero'"),
    ],
)
def test_bad_override_exits_2_with_one_line(run_module, text_file, tmp_path, override, message):
    result = run_module("gpt2exp.train", *TINY, "data=text", f"data.path={text_file}", "logger=none", override)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not list(tmp_path.rglob("*.pt")) and not run_folders(tmp_path)


def test_missing_text_path_exits_2(run_module, tmp_path):
    result = run_module("gpt2exp.train", *TINY, "data=text", "logger=none")
    assert result.returncode == 2 and "data.path" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_text_shorter_than_one_window_exits_2(run_module, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Just a few words here.\nAnd a few more.\n")
    result = run_module("gpt2exp.train", *TINY, "data=text", f"data.path={short}", "logger=none")
    assert result.returncode == 2 and "context_length" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.rglob("*.pt"))


def test_hf_data_files_train_from_a_memory_mapped_token_file(run_module, tmp_path):
    """`data=hf` on a local JSON-lines file: tokenized into the token cache, windows drawn at
    random offsets, and the loss falls."""
    import json

    documents = [f"Document {i}: the quick brown fox jumps over the lazy dog near the river." for i in range(600)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(documents)))
    result = run_module("gpt2exp.train", *TINY, "data=hf", "data.path=docs.jsonl", "trainer.max_steps=30",
                        "trainer.eval_freq=10", "optimizer.lr=3e-3", "logger=none")
    assert result.returncode == 0, result.stderr
    [run_dir] = run_folders(tmp_path)
    evals = [m for m in read_jsonl(run_dir / "metrics.jsonl") if "val/loss" in m]
    assert evals[-1]["val/loss"] < evals[0]["val/loss"] - 2
    assert "data hf:" in result.stdout and (run_dir / ".hydra" / "config.yaml").read_text().count("sampler: random")
