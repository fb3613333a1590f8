"""``bench.sections=[startup]``: each run of the command is timed, its folder removed, a failure
named; one more run's imports are summed by the package each import statement of the program
pulled in."""

import tempfile

import pytest

from gpt2exp.benchmarks.startup import import_seconds, package_import_seconds, startup_seconds
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


IMPORTTIME = """\
import time: self [us] | cumulative | imported package
import time:       100 |        100 | encodings
import time:       500 |     300000 | gpt2exp.train
import time:    150000 |     200000 |   hydra
import time:     50000 |      50000 |     omegaconf
import time:    900000 |    1100000 | torch
import time:    200000 |     200000 |   torch._C
import time:     40000 |     700000 | torch._dynamo
import time:    600000 |     660000 |   sympy
import time:     60000 |      60000 |     mpmath
import time:      1000 |      20000 | torch._dynamo.eval_frame
"""


def test_each_import_statement_of_the_program_counts_once_for_the_package_it_imports():
    assert package_import_seconds(IMPORTTIME) == pytest.approx({
        "torch": 1.1, "torch._dynamo": 0.72, "gpt2exp": 0.3, "encodings": 0.0001})
    assert list(package_import_seconds(IMPORTTIME)) == ["torch", "torch._dynamo", "gpt2exp", "encodings"]


def test_the_import_breakdown_runs_the_command_under_importtime(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    wall, imports = import_seconds(("-c", "import json, email.mime.text"))
    assert wall > 0 and {"json", "email"} <= imports.keys() and imports["email"] > 0
    assert list(tmp_path.iterdir()) == []
