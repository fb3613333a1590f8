"""The sweep's model store: one job trains a training config, the others wait and reuse it."""
import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import asdict

from helpers import TINY
from helpers.reuse import HOLD

from gpt2exp.cli import entrypoint as cli
from gpt2exp.config import TrainConfig
from gpt2exp.training.reuse import training_key


def test_a_sweep_job_whose_model_another_job_trains_says_so_and_trains_its_own_after_the_wait(
        run_module, compose_train, text_file, tmp_path):
    """Through `python -m gpt2exp.train -m`: another live job (here a process of the test) holds
    the lock of this sweep's model; each job names it, waits trainer.reuse_wait_minutes, and trains."""
    args = [*TINY, "data=text", f"data.path={text_file}", "logger=none", "trainer.max_steps=2",
            "decoding.max_new_tokens=4", "trainer.reuse_wait_minutes=0.005"]
    key = training_key(asdict(cli.typed(compose_train(*args), TrainConfig)))
    store = tmp_path / "sweep" / ".trained"
    holder = subprocess.Popen([sys.executable, "-c", HOLD.replace('"k"', repr(key)), str(store)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "holding\n"
        result = run_module("gpt2exp.train", "-m", *args, "decoding.temperature=0.5,1.0", "hydra.sweep.dir=sweep")
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(f"job 3 (pid {holder.pid} on {socket.gethostname()}") == 4, result.stdout
    assert result.stdout.count("this job trains its own model") == 2
    for job in ("0", "1"):
        summary = json.loads((tmp_path / "sweep" / job / "summary.json").read_text())
        assert summary["steps"] == 2 and "reused_from" not in summary
    assert not (store / key / "trained.json").exists()


def test_a_sweep_job_waiting_on_a_holder_that_is_killed_goes_on_at_once(compose_train, text_file, tmp_path):
    """Through `python -m gpt2exp.train -m`: the job that holds the lock of this sweep's model
    (here a process of the test, whose record names another host, as a job of a multi-node sweep
    would) is killed with SIGKILL while the sweep's first job waits for it; that job takes the
    lock and trains at once (not after its 30 minute wait), publishes the model, and the second
    job reuses it."""
    args = [*TINY, "data=text", f"data.path={text_file}", "logger=none", "trainer.max_steps=2",
            "decoding.max_new_tokens=4", "trainer.reuse_wait_minutes=30"]
    key = training_key(asdict(cli.typed(compose_train(*args), TrainConfig)))
    store = tmp_path / "sweep" / ".trained"
    on_node7 = "import socket; socket.gethostname = lambda: 'node7'\n" + HOLD.replace('"k"', repr(key))
    holder = subprocess.Popen([sys.executable, "-c", on_node7, str(store)], stdout=subprocess.PIPE, text=True)
    sweep = None
    try:
        assert holder.stdout.readline() == "holding\n"
        sweep = subprocess.Popen([sys.executable, "-m", "gpt2exp.train", "-m", *args, "decoding.temperature=0.5,1.0",
                                  "hydra.sweep.dir=sweep"], cwd=tmp_path, env=dict(os.environ),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        before = []
        for line in sweep.stdout:
            before.append(line)
            if "waiting for it up to 30 min" in line:
                break
        assert f"job 3 (pid {holder.pid} on node7" in before[-1], "".join(before)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        after, _ = sweep.communicate(timeout=600)  # a hang guard only: were the lock not freed, the job would wait 30 min
    finally:
        for process in (holder, sweep):
            if process is not None:
                process.kill()
                process.wait()
    assert sweep.returncode == 0, "".join(before) + after
    assert "this job trains its own model" not in after and "waiting for it" not in after, after
    trained = json.loads((store / key / "trained.json").read_text())
    assert trained["owner"]["job"] == 0
    first, second = (json.loads((tmp_path / "sweep" / job / "summary.json").read_text()) for job in ("0", "1"))
    assert first["steps"] == 2 and "reused_from" not in first
    assert second["reused_from"] == {"job": 0, "run_dir": str(tmp_path / "sweep" / "0")}
