"""Held-out perplexity, sliding windows: each token scored once, equal to an independent loop
over transformers' model with the same weights, and ``python -m gpt2exp.eval`` end to end."""
import json
import math
import pickle

import pytest
import torch
from helpers import TINY_MODEL, run_folders
from helpers.wandb_reader import find_wandb_file, read_run

from gpt2exp.config import ModelConfig
from gpt2exp.modeling.model import GPTModel


def test_eval_entrypoint_writes_eval_json_and_a_wandb_summary(run_module, train_run, text_file, tmp_path):
    result = run_module("gpt2exp.eval", f"ckpt={train_run}", "data=text", f"data.path={text_file}", "eval.stride=16")
    assert result.returncode == 0, result.stderr
    [run_dir] = [p for p in run_folders(tmp_path) if (p / "eval.json").exists()]
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["split"] == "text" and report["stride"] == 16 and report["context_length"] == 32
    assert report["perplexity"] == pytest.approx(math.exp(report["mean_nll"]))
    assert f"perplexity {report['perplexity']:.3f}" in result.stdout
    run = read_run(find_wandb_file(run_dir))
    assert run["job_type"] == "eval" and run["summary"]["eval/perplexity"] == report["perplexity"]


def test_eval_of_a_model_with_a_short_context_strides_by_its_context(run_module, train_run, text_file, tmp_path):
    """The default stride is min(512, context): the quickstart's 128-token model (here 32) scores as
    it is, where a fixed 512 refused it."""
    result = run_module("gpt2exp.eval", f"ckpt={train_run}", "data=text", f"data.path={text_file}")
    assert result.returncode == 0, result.stderr
    [run_dir] = [p for p in run_folders(tmp_path) if (p / "eval.json").exists()]
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["stride"] == report["context_length"] == 32


@pytest.mark.parametrize(("args", "message"), [
    (["eval.stride=64"], "eval.stride=64 is not allowed: must be at most the model's context (32)"),
    (["model.init=somewhere"], "give either ckpt=<checkpoint file or run folder> or model.init="),
    (["eval.split=train"], "eval.split=train: Invalid value 'train', expected one of [valid, test]"),
])
def test_bad_eval_input_exits_2_with_one_line(run_module, train_run, text_file, args, message):
    result = run_module("gpt2exp.eval", f"ckpt={train_run}", "data=text", f"data.path={text_file}", "logger=none",
                        *args)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert message in line, line


def test_a_wikitext_run_ends_scored_on_the_test_split_and_compare_shows_it(run_module, tmp_path):
    from helpers import TINY

    wikitext = tmp_path / "wikitext-2"
    wikitext.mkdir()
    for split in ("train", "valid", "test"):
        (wikitext / f"wiki.{split}.tokens").write_text(" = Foxes = \n" + " The quick brown fox jumps . \n" * 300)
    result = run_module("gpt2exp.train", *TINY, "data=wikitext2", f"data.local_dir={wikitext}", "trainer.max_steps=2",
                        "trainer.precision=fp32", "logger=none")
    assert result.returncode == 0, result.stderr
    [run_dir] = run_folders(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test/perplexity"] == pytest.approx(math.exp(summary["test/loss"]))
    assert summary["test/stride"] == 32 and summary["test/tokens"] > 1000
    # The test split scores in eval's inference layout: the same loss as eval of the run's checkpoint.
    scored = run_module("gpt2exp.eval", f"ckpt={run_dir}", "data=wikitext2", f"data.local_dir={wikitext}",
                        "eval.split=test", "logger=none")
    assert scored.returncode == 0, scored.stderr
    [eval_dir] = [p for p in run_folders(tmp_path) if (p / "eval.json").exists()]
    assert json.loads((eval_dir / "eval.json").read_text())["mean_nll"] == pytest.approx(summary["test/loss"], abs=1e-6)
    compare = run_module("gpt2exp.compare", str(run_dir))
    assert compare.returncode == 0 and "test_loss" in compare.stdout.splitlines()[0]
    off = run_module("gpt2exp.train", *TINY, "data=text", f"data.path={wikitext / 'wiki.test.tokens'}",
                     "trainer.test=true", "logger=none")
    assert off.returncode == 2 and "trainer.test=true needs a test split" in off.stderr


def save_tiny_checkpoint(path, change_weights) -> str:
    """A checkpoint of the tiny model whose weights `change_weights(model)` altered in place."""
    from gpt2exp.modeling.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = GPTModel(ModelConfig(**TINY_MODEL))
    with torch.no_grad():
        change_weights(model)
    save_checkpoint(path, model=model.state_dict(), optimizer=None, step=1, config={"model": TINY_MODEL})
    return f"ckpt={path}"


def test_a_perplexity_past_the_float_range_is_reported_as_infinite(run_module, tmp_path, text_file):
    ckpt = save_tiny_checkpoint(tmp_path / "sharp.pt", lambda model: model.final_norm.weight.mul_(1e4))
    result = run_module("gpt2exp.eval", ckpt, "data=text", f"data.path={text_file}", "eval.stride=32", "logger=none")
    assert result.returncode == 0, result.stderr
    [run_dir] = [p for p in run_folders(tmp_path) if (p / "eval.json").exists()]
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["mean_nll"] > 710 and report["perplexity"] == math.inf
    assert "perplexity inf" in result.stdout


def test_a_nan_score_exits_2_naming_it_and_writes_no_result(run_module, tmp_path, text_file):
    ckpt = save_tiny_checkpoint(tmp_path / "nan.pt", lambda model: model.final_norm.weight.fill_(math.nan))
    result = run_module("gpt2exp.eval", ckpt, "data=text", f"data.path={text_file}", "eval.stride=32", "logger=none")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: eval: the model's NLL came out NaN"), line
    assert not list(tmp_path.rglob("eval.json")) and not run_folders(tmp_path)


def test_a_pickle_that_is_no_checkpoint_is_one_line(run_module, tmp_path, text_file):
    (tmp_path / "other.pt").write_bytes(pickle.dumps({"weights": [1, 2, 3]}, protocol=4))
    result = run_module("gpt2exp.eval", f"ckpt={tmp_path / 'other.pt'}", "data=text", f"data.path={text_file}",
                        "logger=none")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: ckpt: '{tmp_path / 'other.pt'}' is not a gpt2exp checkpoint"
