"""README's commands are the ones users type: each ``python -m gpt2exp.train`` line is run here,
shrunk to seconds with overrides appended after it, the "Sample from a checkpoint" commands run
as written on a tiny checkpoint, and the set-up and test commands are the ones ``.ci/run`` runs."""
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY, TINY_BENCH, generate_runs, read_jsonl, run_folders
from helpers.readme import README, readme_commands
from helpers.wandb_reader import find_wandb_file, read_run
from omegaconf import OmegaConf

SHRINK = [*TINY, "trainer.max_steps=4", "trainer.eval_freq=2", "trainer.eval_iter=1", "logger=none"]


def block_lines(pattern: str) -> list[str]:
    """The lines of the first ```bash block after `pattern` in the README, comments stripped."""
    block = re.search(pattern + r".*?```bash\n(.*?)```", README, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.strip().splitlines()]


QUICKSTART = block_lines("## Quickstart")[-1]  # the train command, after the set-up


def decoding_sweep_lines() -> list[str]:
    """The "Decoding sweeps" commands: a train sweep, then compare."""
    return block_lines(r"\*\*Decoding sweeps\.\*\*")


def train_commands() -> list[list[str]]:
    """The train lines, but those that start from Hugging Face weights or a preset the README
    writes first, the quickstart's and the decoding sweep's (their own tests run them)."""
    own_tests = {"model.init=", "experiment=my_run"}
    return [shlex.split(c)[3:] for c in readme_commands() if c.startswith("python -m gpt2exp.train")
            and not any(key in c for key in own_tests) and c not in (QUICKSTART, *decoding_sweep_lines())]


def bench_commands() -> list[list[str]]:
    return [shlex.split(c)[3:] for c in readme_commands() if c.startswith("python -m gpt2exp.bench")]


def fake_wikitext(folder: Path) -> Path:
    folder.mkdir()
    article = " = Heading = \n" + " The quick brown fox jumps over the lazy dog near the river bank . \n" * 60
    for split in ("train", "valid", "test"):
        (folder / f"wiki.{split}.tokens").write_text(article, encoding="utf-8")
    return folder


@pytest.mark.parametrize("args", train_commands(), ids=" ".join)
def test_readme_train_command_runs(args, run_module, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no Hugging Face cache: use local files
    extra = []
    if "data=wikitext2" in args:
        extra.append(f"data.local_dir={fake_wikitext(tmp_path / 'wikitext-2')}")
    if "data=text" in args or "data.path=article.txt" in args:
        (tmp_path / "article.txt").write_text("A short article about foxes and dogs.\n" * 200)
    if "data.path=docs.jsonl" in args:
        (tmp_path / "docs.jsonl").write_text('{"text": "A short document about foxes and dogs."}\n' * 400)
    result = run_module("gpt2exp.train", *args, *SHRINK, *extra)
    assert result.returncode == 0, result.stderr
    for run_dir in run_folders(tmp_path):
        assert (run_dir / "checkpoints" / "last.pt").is_file()


def test_readme_user_preset_runs_from_the_working_folder(run_module, tmp_path):
    """The README's own experiments/my_run.yaml, written where the user runs, and its command."""
    preset = re.search(r"cat > experiments/my_run.yaml <<'YAML'\n(.*?)\nYAML\n", README, re.S).group(1)
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "my_run.yaml").write_text(preset)
    [command] = [shlex.split(c)[3:] for c in readme_commands() if "experiment=my_run" in c]
    result = run_module("gpt2exp.train", *command, *SHRINK)
    assert result.returncode == 0, result.stderr
    [run_dir] = run_folders(tmp_path)
    choices = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra.runtime.choices
    assert (choices.experiment, choices.model) == ("my_run", "small")  # the preset's own group choice
    assert (run_dir / "checkpoints" / "last.pt").is_file()


def test_wikitext2_without_cache_or_files_exits_2_saying_how_to_fix(run_module, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a hub that cannot be reached, also online
    result = run_module("gpt2exp.train", "model=small", "data=wikitext2", *SHRINK)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "not in the Hugging Face cache" in line and "data.local_dir" in line
    assert not run_folders(tmp_path)


def test_quickstart_learns_within_fifty_steps(run_module, tmp_path):
    """The quickstart's command, with its own settings (nano, pydocs) cut to its first 50 steps."""
    result = run_module(
        *shlex.split(QUICKSTART)[2:], "trainer.max_steps=50", "trainer.progress=false", "logger=none", timeout=600
    )
    assert result.returncode == 0, result.stderr
    [run_dir] = run_folders(tmp_path)
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    evals = [m for m in map(json.loads, (run_dir / "metrics.jsonl").open()) if "val/loss" in m]
    assert evals[0]["val/loss"] > 10.5 and evals[-1]["val/loss"] < evals[0]["val/loss"] - 3


def test_readme_sample_commands_sample_and_sweep_into_one_wandb_group(train_run, tmp_path):
    """The section's commands as written, in a folder with one (tiny) training run."""
    block = re.search(r"## Sample from a checkpoint.*?```bash\n(.*?)```", README, re.S).group(1)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    single, *sweep = generate_runs(tmp_path)
    assert "multirun" not in str(single) and len(read_jsonl(single / "samples.jsonl")) == 3

    runs = [read_run(find_wandb_file(run_dir)) for run_dir in sweep]
    settings = sorted((r["config"]["decoding"]["temperature"], r["config"]["decoding"]["top_k"]) for r in runs)
    assert settings == [(0.3, 3), (0.3, 40), (1.0, 3), (1.0, 40), (1.5, 3), (1.5, 40)]
    assert len({r["run_id"] for r in runs}) == 6
    [group] = {r["group"] for r in runs}
    assert group == "_".join(sweep[0].parent.parts[-2:])
    assert all(r["job_type"] == "generate" and "gen/nll" in r["summary"] for r in runs)


@pytest.mark.parametrize("args", bench_commands(), ids=" ".join)
def test_readme_bench_command_runs(args, run_module):
    shrink = [*TINY_BENCH, "bench.sections=[train,generate]"] if "bench.sections" not in " ".join(args) else TINY_BENCH
    result = run_module("gpt2exp.bench", *args, *shrink)
    assert result.returncode == 0, result.stderr
    assert "gpt2exp, KV cache" in result.stdout


def test_readme_decoding_sweep_then_compare_plots_a_figure_that_varies(run_module, text_file, tmp_path):
    """The "Decoding sweeps" commands: six jobs train one (tiny) model long enough for the
    temperature to matter, then compare plots a gen/* figure against the temperature."""
    train_line, compare_line = [shlex.split(line)[3:] for line in decoding_sweep_lines()]
    train = run_module("gpt2exp.train", *train_line, *TINY, "data=text", f"data.path={text_file}",
                       "trainer.max_steps=30", "trainer.eval_freq=30", "optimizer.lr=3e-3", "logger=none")
    assert train.returncode == 0, train.stderr
    jobs = sorted((tmp_path / "outputs" / "decoding-sweep").glob("[0-9]*"), key=lambda p: int(p.name))
    summaries = [json.loads((job / "summary.json").read_text()) for job in jobs]
    assert len(summaries) == 6 and len({s["final/val_loss"] for s in summaries}) == 1  # one model
    assert len({round(s["gen/nll"], 6) for s in summaries}) > 1
    assert all(len(read_jsonl(job / "samples.jsonl")) >= 3 for job in jobs)
    assert all((job / "checkpoints" / "last.pt").is_file() for job in jobs)
    compare = run_module("gpt2exp.compare", *compare_line)
    assert compare.returncode == 0, compare.stderr
    assert "outputs/decoding-sweep/gen_nll_vs_decoding.temperature.png" in compare.stdout


def test_readme_pretrained_eval_and_export_commands_run(run_module, tmp_path):
    """The "Pretrained GPT-2, evaluation and export" commands as written, with a tiny random
    HF-format GPT-2 in hf/gpt2 and WikiText files of a few thousand tokens."""
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2)).save_pretrained(tmp_path / "hf" / "gpt2")
    wikitext = tmp_path / "wikitext-2"
    wikitext.mkdir()
    for split in ("train", "valid", "test"):
        (wikitext / f"wiki.{split}.tokens").write_text(" = Foxes = \n" + " The quick brown fox jumps . \n" * 600)
    block = re.search(r"## Pretrained GPT-2, evaluation and export.*?```bash\n(.*?)```", README, re.S).group(1)
    shrink = {"gpt2exp.train": ["trainer.max_steps=2", "trainer.eval_freq=2", "trainer.eval_iter=1",
                                "data.batch_size=2", "trainer.progress=false"]}
    for line in block.strip().splitlines():
        _, _, module, *args = shlex.split(line)
        extra = [f"data.local_dir={wikitext}"] if "data=wikitext2" in args else []
        extra += ["logger=none"] if module in ("gpt2exp.train", "gpt2exp.eval") else []
        result = run_module(module, *args, *extra, *shrink.get(module, []))
        assert result.returncode == 0, (line, result.stderr)
    evals = sorted(tmp_path.glob("outputs/eval/*/*/eval.json"))
    assert [json.loads(path.read_text())["stride"] for path in evals] == [512, 1024]
    assert (tmp_path / "exported" / "gpt2-finetuned" / "model.safetensors").is_file()
