"""What the unit and end-to-end tests of reuse share."""

import subprocess
import sys

import pytest

HOLD = """
import sys, time
from gpt2exp.training.reuse import claim
with claim(sys.argv[1], "k", {"job": 3, "run_dir": "sweep/3"}, wait_minutes=1) as slot:
    print("holding", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process that holds the lock of model "k", as a job training it does."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "holding\n"
    yield process
    process.kill()
    process.wait()
