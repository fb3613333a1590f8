"""The console commands that ``pip install`` puts on the PATH, and Hydra's tab completion for them."""
import shutil

import pytest
from helpers.console import run
from helpers.readme import ROOT

COMMANDS = ("gpt2exp-train", "gpt2exp-generate", "gpt2exp-compare", "gpt2exp-bench", "gpt2exp-eval", "gpt2exp-export")


@pytest.mark.parametrize("command", COMMANDS)
def test_each_console_command_starts(tmp_path, command):
    result = run(command, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not list(tmp_path.iterdir())


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


def test_tab_completion_lists_the_presets_of_both_folders_whatever_a_user_added(tmp_path):
    """`experiment=<TAB>` lists the shipped presets and the working folder's own. Run against a copy
    of the checkout whose experiments/ holds a preset a user added there, as following the README
    from the checkout once did: the shipped list is what that folder holds, not a fixed one."""
    checkout = tmp_path / "checkout"
    for folder in ("gpt2exp", "conf", "experiments"):
        shutil.copytree(ROOT / folder, checkout / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (checkout / "experiments" / "stray.yaml").write_text("# @package _global_\nseed: 3\n")
    work = tmp_path / "work"
    (work / "experiments").mkdir(parents=True)
    (work / "experiments" / "mine.yaml").write_text("# @package _global_\nseed: 7\n")
    presets = run("gpt2exp-train", "-sc", "query=bash", cwd=work, COMP_LINE="gpt2exp-train experiment=",
                  PYTHONPATH=str(checkout))
    shipped = {path.stem for path in (checkout / "experiments").glob("*.yaml")}
    assert {"article", "context_sweep", "decoding_sweep", "finetune", "stray"} <= shipped
    assert presets.stdout.split() == [f"experiment={name}" for name in sorted({*shipped, "mine"})]
