"""README's commands are the ones users type: each ``python -m gpt2exp.train`` line is run here,
shrunk to seconds with overrides appended after it, the "Sample from a checkpoint" commands run
as written on a tiny checkpoint, and the set-up and test commands are the ones ``.ci/run`` runs."""
import re

from helpers.readme import README, ROOT, readme_commands


def test_setup_and_test_commands_are_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    commands = readme_commands()
    assert 'pip install -e ".[dev]"' in commands and 'pip install --quiet -e ".[dev]"' in ci
    lanes = [c for c in commands if c.startswith("pytest")]
    assert lanes == ["pytest tests/unit -n 2 --dist loadfile", "pytest tests/e2e -n 2 --dist loadfile"]
    assert ci.rstrip().splitlines()[-len(lanes):] == lanes


def test_the_own_preset_example_writes_in_a_working_folder_outside_the_checkout():
    """Followed from the checkout, the example once wrote into the shipped experiments/."""
    commands = readme_commands()
    writes = next(i for i, c in enumerate(commands) if c.startswith("cat > experiments/my_run.yaml"))
    assert re.fullmatch(r"mkdir -p (~/[\w-]+)/experiments && cd \1", commands[writes - 1]), commands[writes - 1]


def test_gitignore_covers_the_folders_the_readme_has_users_create():
    """Folders README's commands write to or read from, relative to where they run (out=exported/...,
    --out report, model.init=hf/gpt2, outputs/), stay out of git when a user runs them in the checkout."""
    folders = set(re.findall(r"--out ([a-z][\w-]*)", README))
    folders |= {folder for c in readme_commands() for folder in
                re.findall(r"\b(?:out|ckpt|model\.init|hydra\.run\.dir|data\.path|data\.local_dir)=([\w-]+)/", c)}
    assert {"outputs", "exported", "report", "hf"} <= folders
    ignored = {line.strip("/") for line in (ROOT / ".gitignore").read_text().splitlines()}
    assert folders <= ignored, folders - ignored
