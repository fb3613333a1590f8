"""A failed multirun job's failure.json is written whole: a new file, never through one already there."""

import json
import os

from gpt2exp.cli.entrypoint import record_failure


def test_failure_record_replaces_the_file_and_leaves_a_linked_one_alone(tmp_path):
    """A failure.json hard-linked to a user's file (a copied run folder, `cp -al`) is replaced, not
    written through: the user's file keeps its text."""
    users = tmp_path / "kept.json"
    users.write_text('{"mine": true}\n')
    run_dir = tmp_path / "sweep" / "3"
    run_dir.mkdir(parents=True)
    os.link(users, run_dir / "failure.json")
    assert record_failure(run_dir, 3, ["seed=3"], "ValueError: boom") == float("inf")
    assert json.loads((run_dir / "failure.json").read_text()) == {
        "status": "failed", "job": 3, "overrides": ["seed=3"], "error": "ValueError: boom"}
    assert users.read_text() == '{"mine": true}\n'
    assert not [p.name for p in run_dir.iterdir() if p.name != "failure.json"], "no temporary left"
