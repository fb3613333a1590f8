"""End-to-end runs through ``python -m gpt2exp.generate`` on a tiny training run's checkpoint."""

import pytest
import torch
from helpers import TINY_MODEL, generate_runs, read_jsonl, run_folders
from helpers.wandb_reader import find_wandb_file, read_run

from gpt2exp.modeling.checkpoint import save_checkpoint

METRICS = {"gen/tokens_per_sec", "gen/distinct_1", "gen/distinct_2", "gen/repeat_4gram_rate", "gen/nll"}


def test_samples_metrics_and_plot_land_in_the_run_folder_and_wandb(run_module, train_run, tmp_path):
    result = run_module("gpt2exp.generate", f"ckpt={train_run}", "prompt=at the start of", "decoding.num_samples=2",
                        "decoding.max_new_tokens=12")
    assert result.returncode == 0, result.stderr
    [run_dir] = generate_runs(tmp_path)

    samples = read_jsonl(run_dir / "samples.jsonl")
    assert len(samples) == 2 and all(s["text"].startswith("at the start of") for s in samples)
    assert samples[0]["settings"] | {"sample": 0} == {"temperature": 1.0, "top_k": 40, "top_p": None,
                                                     "max_new_tokens": 12, "eos_id": None, "seed": 123,
                                                     "sample": 0}
    assert f"sample 1: {samples[1]['text']}" in result.stdout
    [metrics] = read_jsonl(run_dir / "metrics.jsonl")
    assert set(metrics) == METRICS | {"step"} and metrics["gen/tokens_per_sec"] > 0
    assert 0 < metrics["gen/distinct_1"] <= 1 and metrics["gen/nll"] > 0
    assert (run_dir / "next_token_probs.png").stat().st_size > 0

    run = read_run(find_wandb_file(run_dir))
    assert run["job_type"] == "generate" and run["group"] is None and run["exit_code"] == 0
    assert run["config"]["decoding"]["top_k"] == 40 and run["config"]["ckpt"] == str(train_run)
    assert {key: run["summary"][key] for key in METRICS} == {key: metrics[key] for key in METRICS}
    table = run["tables"]["samples"]
    assert table["columns"][:3] == ["step", "prompt", "text"] and "temperature" in table["columns"]
    assert [row[2] for row in table["data"]] == [s["text"] for s in samples]
    assert any(path.startswith("media/images/next_token_probs") for path in run["files"])

    again = run_module("gpt2exp.generate", f"ckpt={train_run}/checkpoints/last.pt", "prompt=at the start of",
                       "decoding.num_samples=2", "decoding.max_new_tokens=12", "logger=none")
    assert again.returncode == 0, again.stderr
    assert [s["text"] for s in read_jsonl(generate_runs(tmp_path)[-1] / "samples.jsonl")] == [s["text"] for s in samples]


def test_a_prompt_longer_than_the_context_is_cropped_with_one_warning(run_module, train_run):
    result = run_module("gpt2exp.generate", f"ckpt={train_run}", "prompt=" + "word " * 40, "logger=none",
                        "decoding.max_new_tokens=3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("the model sees only the last context_length=32") == 1


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("decoding.temperature=-1", "decoding.temperature=-1.0 is not allowed: must be >= 0"),
        ("decoding.top_k=0", "decoding.top_k=0 is not allowed: must be >= 1 or null"),
        ("decoding.top_k=50258", "decoding.top_k=50258 is not allowed: must be in [1, 50257]"),
        ("decoding.top_p=0", "decoding.top_p=0.0 is not allowed: must be in (0, 1]"),
        ("decoding.top_p=1.5", "decoding.top_p=1.5 is not allowed: must be in (0, 1]"),
        ("prompt=", "prompt='' is not allowed: must not be empty"),
        ("ckpt=missing.pt", "ckpt: 'missing.pt' does not exist"),
        ("ckpt=notes.txt", "ckpt: 'notes.txt' is not a gpt2exp checkpoint"),
        ("ckpt=outputs", "ckpt: run folder 'outputs' has no checkpoints/last.pt"),
        ("ckpt=hollow.pt", "ckpt: 'hollow.pt' is an incomplete gpt2exp checkpoint (its 'model' is missing"),
        ("ckpt=huge.pt", "ckpt: 'huge.pt' declares a model that cannot be built: model: 826,335,133,696 parameters"),
        ("ckpt=misfit.pt", "ckpt: 'misfit.pt' holds weights that do not fit its model config (first: "),
        ("device=cuda:99", "device='cuda:99' is not available on this machine"),
        ("ckpt=wandb:me/gpt2exp/model-abc123:best", "ckpt=wandb:me/gpt2exp/model-abc123:best: W&B is not reachable "
         "from here (logging offline); run `wandb artifact get me/gpt2exp/model-abc123:best` where it is"),
    ],
)
def test_bad_input_exits_2_with_one_line(run_module, train_run, tmp_path, override, message):
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    torch.save({"format": "gpt2exp-checkpoint", "version": 1}, tmp_path / "hollow.pt")
    for name, emb_dim, layers in (("huge.pt", 32768, 64), ("misfit.pt", 4096, 8)):  # 826 B and 1.6 B parameters
        model = {**TINY_MODEL, "emb_dim": emb_dim, "n_heads": 64, "n_layers": layers, "context_length": 1024}
        save_checkpoint(tmp_path / name, model={}, optimizer=None, step=1, config={"model": model})
    result = run_module("gpt2exp.generate", f"ckpt={train_run}", override)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert run_folders(tmp_path) == [train_run] and not list(tmp_path.rglob("wandb"))


def test_greedy_decoding_makes_one_sample_and_says_why(run_module, train_run, tmp_path):
    result = run_module("gpt2exp.generate", f"ckpt={train_run}", "decoding=greedy", "decoding.num_samples=3",
                        "decoding.max_new_tokens=5", "logger=none")
    assert result.returncode == 0, result.stderr
    assert "decoding.temperature=0 is greedy: its 3 samples would be the same text, so one is made" in result.stdout
    [run_dir] = generate_runs(tmp_path)
    assert len(read_jsonl(run_dir / "samples.jsonl")) == 1 and "done: 1 sample in" in result.stdout


def test_no_ckpt_shows_the_form_and_the_newest_run(run_module, train_run, tmp_path):
    result = run_module("gpt2exp.generate")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: ckpt is required: ckpt=<checkpoint file or run folder>; the newest run here is ckpt="
        f"{train_run.relative_to(tmp_path)}")
    elsewhere = tmp_path / "empty"
    elsewhere.mkdir()
    result = run_module("gpt2exp.generate", cwd=elsewhere)
    assert result.stderr.strip() == "error: ckpt is required: ckpt=<checkpoint file or run folder>"
