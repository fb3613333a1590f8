"""The sweep's model store: one job trains a training config, the others wait and reuse it."""
import json
import socket
import subprocess
import sys

from helpers.reuse import HOLD

from gpt2exp.training.reuse import training_key


def test_a_sweep_job_whose_model_another_job_trains_says_so_and_trains_its_own_after_the_wait(
        run_module, compose_train, text_file, tmp_path):
    """Through `python -m gpt2exp.train -m`: another live job (here a process of the test) holds
    the lock of this sweep's model; each job names it, waits trainer.reuse_wait_minutes, and trains."""
    from dataclasses import asdict

    from helpers import TINY

    from gpt2exp.cli import entrypoint as cli
    from gpt2exp.config import TrainConfig

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
