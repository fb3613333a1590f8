"""README's commands are the ones users type: each ``python -m gpt2exp.train`` line is run here,
shrunk to seconds with overrides appended after it, the "Sample from a checkpoint" commands run
as written on a tiny checkpoint, and the set-up and test commands are the ones ``.ci/run`` runs."""
from helpers.readme import ROOT, readme_commands


def test_setup_and_test_commands_are_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    commands = readme_commands()
    assert 'pip install -e ".[dev]"' in commands and 'pip install --quiet -e ".[dev]"' in ci
    lanes = [c for c in commands if c.startswith("pytest")]
    assert lanes == ["pytest tests/unit", "pytest tests/e2e -n 2 --dist loadfile"]
    assert ci.rstrip().splitlines()[-len(lanes):] == lanes
