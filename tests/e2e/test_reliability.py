"""What a run does when things go wrong around it: a write that fails (a full disk), a second
Ctrl-C while a checkpoint is written, a writer killed mid-file; and inputs that used to end in
a traceback."""

import fcntl
import os
import resource
import signal
import socket
import subprocess
import sys
import time

import pytest
from helpers import TINY, read_jsonl, run_folders

from gpt2exp.atomic import write_atomic
from gpt2exp.modeling.checkpoint import load_checkpoint


@pytest.fixture
def tiny(text_file):
    return [*TINY, "data=text", f"data.path={text_file}", "logger=none", "trainer.eval_freq=2",
            "decoding.max_new_tokens=4"]


def limit_file_size(max_bytes: int):
    """For a subprocess: writes past `max_bytes` fail with EFBIG, as a full disk fails them."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return apply


def test_a_failed_checkpoint_write_is_one_line_with_the_resume_command(tmp_path, tiny):
    args = [*tiny, "trainer.max_steps=6", "hydra.run.dir=run"]
    result = subprocess.run([sys.executable, "-m", "gpt2exp.train", *args], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, preexec_fn=limit_file_size(4 << 20))
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.strip().splitlines()
    checkpoints = tmp_path / "run" / "checkpoints"
    assert line.startswith(f"error: cannot write {checkpoints}/") and "(File too large)" in line, line
    assert line.endswith("trainer.resume=" + str(tmp_path / "run")) and "the last good checkpoint is none yet" in line
    assert not list(checkpoints.glob("*.pt")) and not list(checkpoints.glob(".*.tmp"))


def test_a_second_ctrl_c_while_a_checkpoint_is_written_still_exits_130_with_the_resume_command(tmp_path, tiny):
    # A model whose checkpoint takes a while to write: the second signal comes while it is written.
    args = [*tiny, "model.emb_dim=384", "model.n_heads=4", "model.n_layers=4", "trainer.max_steps=1000",
            "trainer.checkpoint_freq=1000", "hydra.run.dir=run"]
    process = subprocess.Popen([sys.executable, "-m", "gpt2exp.train", *args], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoints = tmp_path / "run" / "checkpoints"
    wait_until(lambda: (checkpoints / "best.pt").exists(), process)
    process.send_signal(signal.SIGINT)
    wait_until(lambda: list(checkpoints.glob(".step-*.tmp")), process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    last_line = stderr.strip().splitlines()[-1]
    assert last_line.startswith("interrupted at step ") and last_line.endswith(f"trainer.resume={tmp_path / 'run'}")
    step = int(last_line.split()[3].rstrip(";"))
    assert load_checkpoint(checkpoints / "last.pt")["step"] == step
    assert not list(checkpoints.glob(".*.tmp"))


def wait_until(condition, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.002)


def test_a_killed_writers_temporary_file_is_removed_by_the_next_writer(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    stale = tmp_path / f".last.pt.{int(dead.stdout)}@{host}.abcd1234.tmp"
    live = tmp_path / f".last.pt.{os.getpid()}@{host}.abcd1234.tmp"
    foreign = tmp_path / ".notes.tmp"
    for path in (stale, live, foreign):
        path.write_bytes(b"half a file")
    with live.open("rb") as writing:
        fcntl.flock(writing, fcntl.LOCK_EX)  # a live writer holds a lock on its temporary
        write_atomic(tmp_path / "step.pt", lambda file: file.write(b"whole"))
    assert not stale.exists() and live.exists() and foreign.exists()


def test_best_checkpoint_exists_when_the_first_eval_is_the_best(run_module, tmp_path, tiny):
    result = run_module("gpt2exp.train", *tiny, "trainer.max_steps=4", "optimizer.lr=3", "optimizer.warmup_steps=0",
                        "trainer.skip_nonfinite=true", "hydra.run.dir=run")
    assert result.returncode == 0, result.stderr
    losses = [m["val/loss"] for m in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "val/loss" in m]
    assert min(losses) == losses[0]
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["step"] == 0


def test_an_end_of_text_token_in_start_context_is_sampled_from(run_module, tmp_path, tiny):
    result = run_module("gpt2exp.train", *tiny, "trainer.max_steps=2", "trainer.start_context='<|endoftext|>The'")
    assert result.returncode == 0, result.stderr
    [run_dir] = run_folders(tmp_path)
    assert read_jsonl(run_dir / "samples.jsonl")[-1]["prompt"] == "<|endoftext|>The"


# `python -m gpt2exp.train`, whose final sample (all `decoding.num_samples` of it) kills the process.
KILLED_IN_THE_FINAL_SAMPLE = """
import os, runpy, signal
import gpt2exp.modeling.decoding as decoding

sample = decoding.sample_continuations


def never_ends(model, prompt, cfg, num_samples=None):
    if num_samples is None:
        os.kill(os.getpid(), signal.SIGKILL)
    return sample(model, prompt, cfg, num_samples)


decoding.sample_continuations = never_ends
runpy.run_module("gpt2exp.train", run_name="__main__", alter_sys=True)
"""


def test_the_final_checkpoint_is_written_before_the_final_sample(tmp_path, tiny):
    """A sample that never ends (here: the process killed as it starts) must not cost the run its final checkpoint."""
    result = subprocess.run([sys.executable, "-c", KILLED_IN_THE_FINAL_SAMPLE, *tiny, "trainer.max_steps=4",
                             "hydra.run.dir=run"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 4


def test_a_sigterm_repeated_at_once_is_one_request_and_a_second_ctrl_c_stops_at_once():
    """SLURM signals every process of a job step and torchrun forwards the SIGTERM to its workers
    again: that second copy is the same request. A person's second Ctrl-C still stops at once."""
    from gpt2exp.training.interrupt import GracefulStop

    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested() and stop.exit_code == 143
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
