"""The console commands that ``pip install`` puts on the PATH, and Hydra's tab completion for them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY, run_folders

BIN = Path(sys.executable).parent
COMMANDS = ("gpt2exp-train", "gpt2exp-generate", "gpt2exp-compare", "gpt2exp-bench")


def run(command: str, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / command), *args], cwd=cwd, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("command", COMMANDS)
def test_each_console_command_starts(tmp_path, command):
    result = run(command, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_gpt2exp_train_trains_from_any_folder(tmp_path, text_file):
    result = run("gpt2exp-train", *TINY, "data=text", f"data.path={text_file}", "trainer.max_steps=2",
                 "logger=none", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [run_dir] = run_folders(tmp_path)
    assert (run_dir / "checkpoints" / "last.pt").is_file()


def test_tab_completion_installs_and_completes_groups_and_keys(tmp_path):
    script = run("gpt2exp-train", "-sc", "install=bash", cwd=tmp_path)
    assert script.returncode == 0, script.stderr
    assert "complete -o nospace -o default -F hydra_bash_completion gpt2exp-train" in script.stdout
    # What bash asks when the user presses tab after `gpt2exp-train model=` and `... decoding.t`.
    models = run("gpt2exp-train", "-sc", "query=bash", cwd=tmp_path, COMP_LINE="gpt2exp-train model=")
    assert models.stdout.split() == ["model=large", "model=medium", "model=nano", "model=small", "model=xl"]
    keys = run("gpt2exp-generate", "-sc", "query=bash", cwd=tmp_path, COMP_LINE="gpt2exp-generate decoding.t")
    assert keys.stdout.split() == ["decoding.temperature=", "decoding.top_k=", "decoding.top_p="]
    assert not list(tmp_path.iterdir()), "completion writes nothing"
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "mine.yaml").write_text("# @package _global_\nseed: 7\n")
    presets = run("gpt2exp-train", "-sc", "query=bash", cwd=tmp_path, COMP_LINE="gpt2exp-train experiment=")
    assert presets.stdout.split() == [f"experiment={name}" for name in
                                      ("article", "context_sweep", "decoding_sweep", "finetune", "mine")]
