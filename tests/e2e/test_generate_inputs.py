"""``python -m gpt2exp.generate`` on several prompts: from a file (one run), and typed on stdin in an
interactive session (a pipe), each sample labelled with its prompt."""
import os
import subprocess
import sys

from helpers import generate_runs, read_jsonl


def test_a_prompt_file_samples_each_line_labelled_with_its_prompt(run_module, train_run, tmp_path):
    (tmp_path / "prompts.txt").write_text("once upon a time\n\nthe quick brown\n", encoding="utf-8")
    result = run_module("gpt2exp.generate", f"ckpt={train_run}", "prompt_file=prompts.txt", "decoding.num_samples=2",
                        "decoding.max_new_tokens=6", "batch_size=3", "logger=none")
    assert result.returncode == 0, result.stderr
    [run_dir] = generate_runs(tmp_path)
    samples = read_jsonl(run_dir / "samples.jsonl")
    assert [s["prompt"] for s in samples] == ["once upon a time"] * 2 + ["the quick brown"] * 2
    assert all(s["text"].startswith(s["prompt"]) for s in samples)
    assert [s["settings"]["sample"] for s in samples] == [0, 1, 0, 1]
    console = [line.split("] ", 1)[1] for line in result.stdout.splitlines() if "] prompt " in line or "] sample " in line]
    assert console == ["prompt 1 of 2: once upon a time", *(f"sample {s['settings']['sample']}: {s['text']}"
                                                            for s in samples[:2]),
                       "prompt 2 of 2: the quick brown", *(f"sample {s['settings']['sample']}: {s['text']}"
                                                           for s in samples[2:])]
    assert "done: 4 samples in" in result.stdout


def test_an_interactive_session_samples_each_typed_line_and_ends_at_end_of_input(train_run, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "gpt2exp.generate", f"ckpt={train_run}", "interactive=true", "decoding=greedy",
         "decoding.max_new_tokens=4", "logger=none"],
        input="every effort\n\n   \nthe quick brown\n", cwd=tmp_path, env=dict(os.environ), capture_output=True,
        text=True, timeout=300,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    [run_dir] = generate_runs(tmp_path)
    samples = read_jsonl(run_dir / "samples.jsonl")
    assert [s["prompt"] for s in samples] == ["every effort", "the quick brown"]
    assert [line.split("] ", 1)[1] for line in result.stdout.splitlines() if "] sample " in line] == [
        f"sample 0: {s['text']}" for s in samples]
    assert "> " not in result.stdout  # the prompt mark is for a terminal only
    assert (run_dir / "metrics.jsonl").is_file() and "done: 2 samples in" in result.stdout
