"""``bench.sections=[startup]``: each run of the command is timed, its folder removed, a failure named."""

import tempfile

import pytest

from gpt2exp.benchmarks.startup import startup_seconds
from gpt2exp.errors import UserError


def test_startup_times_each_run_of_the_command_and_leaves_no_folder_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    made_run_folder = ("-c", "import pathlib, sys; pathlib.Path(sys.argv[1].split('=', 1)[1]).mkdir(parents=True)")
    seconds = startup_seconds(2, made_run_folder)
    assert len(seconds) == 2 and all(value > 0 for value in seconds)
    assert list(tmp_path.iterdir()) == []


def test_a_startup_run_that_fails_is_reported_in_one_line_with_its_last_words():
    with pytest.raises(UserError, match=r"exited 3: boom$"):
        startup_seconds(1, ("-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"))
