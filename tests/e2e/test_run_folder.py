"""A run owns its folder: a failing run takes back only what it added, two runs never share a
folder, and a folder that holds a run is only ever continued, never overwritten. Each case
through the real entrypoints, in subprocesses."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TINY, read_jsonl, run_folders

from gpt2exp.modeling.checkpoint import load_checkpoint
from gpt2exp.runs import folder as run_folder
from gpt2exp.runs.layout import RunLayout
from gpt2exp.training.step_checkpoints import step_checkpoints


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative path -> sha256), every folder (-> "dir") and link (-> its target)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            found[rel] = f"-> {os.readlink(path)}"
        else:
            found[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def user_data(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "important.txt").write_text("a user's own file\n")
    (folder / "notes").mkdir(exist_ok=True)
    (folder / "notes" / "draft.md").write_bytes(os.urandom(64))
    return folder


@pytest.fixture
def tiny(text_file):
    return [*TINY, "data=text", f"data.path={text_file}", "logger=none", "trainer.max_steps=4",
            "trainer.eval_freq=2", "decoding.max_new_tokens=4"]


@pytest.mark.parametrize("run_dir, bad", [
    ("victim", "optimizer.lr=-1"),
    (".", "optimizer.lr=-1"),
    ("../etc", "trainer.max_steps=0"),
    ("victim", "model.n_heads=5"),
])
def test_a_user_error_leaves_an_existing_folder_byte_for_byte(run_module, tmp_path, tiny, run_dir, bad):
    cwd = tmp_path / "work"
    cwd.mkdir()
    folder = user_data((cwd / run_dir).resolve())
    before = snapshot(folder)
    result = run_module("gpt2exp.train", *tiny, f"hydra.run.dir={run_dir}", bad, cwd=cwd)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert snapshot(folder) == before


def test_a_folder_with_files_of_a_runs_names_is_refused(run_module, tmp_path, tiny):
    folder = user_data(tmp_path / "mine")
    (folder / "metrics.jsonl").write_text('{"my": "own records"}\n')
    before = snapshot(folder)
    result = run_module("gpt2exp.train", *tiny, "hydra.run.dir=mine")
    assert result.returncode == 2 and "holds files of the names a run writes (metrics.jsonl)" in result.stderr
    assert snapshot(folder) == before


def test_a_user_error_removes_the_folders_it_made_and_nothing_else(run_module, tmp_path, tiny):
    result = run_module("gpt2exp.train", *tiny, "optimizer.lr=-1")
    assert result.returncode == 2
    assert not (tmp_path / "outputs").exists()
    result = run_module("gpt2exp.train", *tiny, "hydra.run.dir=a/b/c", "trainer.max_steps=0")
    assert result.returncode == 2
    assert not (tmp_path / "a").exists()


def test_an_unwritable_run_folder_is_one_line(run_module, tiny):
    for run_dir in ("/proc/gpt2exp-test", "/dev/null/x"):
        result = run_module("gpt2exp.train", *tiny, f"hydra.run.dir={run_dir}")
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error: hydra.run.dir: ") and result.stderr.count("\n") == 1


@pytest.fixture
def trained(run_module, tmp_path, tiny) -> Path:
    result = run_module("gpt2exp.train", *tiny, "hydra.run.dir=run")
    assert result.returncode == 0, result.stderr
    return tmp_path / "run"


def test_generate_never_writes_into_a_training_run(run_module, trained):
    before = snapshot(trained)
    for extra in (["decoding.top_k=0"], []):
        result = run_module("gpt2exp.generate", f"ckpt={trained}", f"hydra.run.dir={trained}", "logger=none", *extra)
        assert result.returncode == 2, result.stderr
        assert "hydra.run.dir" in result.stderr and result.stderr.count("\n") == 1
    assert snapshot(trained) == before


def test_a_new_run_never_writes_into_an_earlier_run(run_module, trained, tiny):
    before = snapshot(trained)
    result = run_module("gpt2exp.train", *tiny, f"hydra.run.dir={trained}", "trainer.max_steps=6")
    assert result.returncode == 2 and "already holds a run" in result.stderr
    result = run_module("gpt2exp.train", *tiny, f"hydra.run.dir={trained}", "trainer.resume=auto", "model.emb_dim=64")
    assert result.returncode == 2 and "model.emb_dim" in result.stderr, result.stderr
    assert snapshot(trained) == before


def written_entries(folder: Path) -> set[str]:
    """The names a run left at the top of its folder, besides its log file."""
    return {p.name for p in folder.iterdir() if p.suffix != ".log"}


def test_eval_never_replaces_a_users_eval_json_and_every_command_writes_only_the_layouts_names(
        run_module, trained, text_file, tmp_path):
    folder = user_data(tmp_path / "mine")
    (folder / "eval.json").write_text('{"my": "own scores"}\n')
    before = snapshot(folder)
    score = ["gpt2exp.eval", f"ckpt={trained}", "data=text", f"data.path={text_file}", "eval.stride=16", "logger=none"]
    result = run_module(*score, "hydra.run.dir=mine")
    assert result.returncode == 2 and "holds files of the names a run writes (eval.json)" in result.stderr, result.stderr
    assert snapshot(folder) == before
    result = run_module(*score, "hydra.run.dir=scored")
    assert result.returncode == 0, result.stderr
    assert "eval.json" in written_entries(tmp_path / "scored")
    for run_dir in (trained, tmp_path / "scored"):
        assert written_entries(run_dir) <= set(RunLayout.entries()), run_dir


@pytest.mark.parametrize("link", ["symlink", "dangling symlink", "hard link"])
def test_a_lock_file_that_is_a_link_is_refused_and_its_target_left_as_it_was(run_module, tmp_path, tiny, link):
    victim = user_data(tmp_path / "elsewhere") / "important.txt"
    folder = user_data(tmp_path / "shared")
    lock = folder / run_folder.LOCK_FILE
    if link == "hard link":
        os.link(victim, lock)
    else:
        lock.symlink_to(victim if link == "symlink" else tmp_path / "elsewhere" / "created.txt")
    before, victims = snapshot(folder), snapshot(victim.parent)
    for extra in (["optimizer.lr=-1"], []):
        result = run_module("gpt2exp.train", *tiny, "hydra.run.dir=shared", *extra)
        assert snapshot(victim.parent) == victims and snapshot(folder) == before
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert f"'{lock}' is not a lock file of its own" in result.stderr


def test_resuming_a_finished_run_writes_nothing(run_module, trained, tiny, tmp_path):
    before = snapshot(trained)
    for args in ([f"hydra.run.dir={trained}", "trainer.resume=auto"], [f"trainer.resume={trained}"]):
        result = run_module("gpt2exp.train", *tiny, *args)
        assert result.returncode == 0, result.stderr
        assert "already complete" in result.stdout + result.stderr
    assert snapshot(trained) == before
    assert not (tmp_path / "outputs").exists()


def start(cwd: Path, module: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def test_a_second_run_aimed_at_a_running_one_names_its_owner(tmp_path, tiny, run_module):
    first = start(tmp_path, "gpt2exp.train", *tiny, "hydra.run.dir=shared", "trainer.max_steps=1000000",
                  "trainer.eval_freq=50")
    wait_for(tmp_path / "shared" / run_folder.LOCK_FILE, first)
    for extra in (["trainer.max_steps=4"], ["optimizer.lr=-1"], ["trainer.resume=auto"]):
        second = run_module("gpt2exp.train", *tiny, "hydra.run.dir=shared", *extra)
        assert second.returncode == 2, second.stderr
        assert "in use by another run" in second.stderr and f"pid {first.pid}" in second.stderr
        assert second.stderr.count("\n") == 1
    wait_for(tmp_path / "shared" / "metrics.jsonl", first)  # training, so SIGTERM stops it gracefully
    first.send_signal(signal.SIGTERM)  # it stops at its next step, with a checkpoint
    _, err = first.communicate(timeout=300)
    assert first.returncode == 143, err
    steps = [m["step"] for m in read_jsonl(tmp_path / "shared" / "metrics.jsonl") if "val/loss" in m]
    assert steps == list(range(0, 50 * len(steps), 50))  # one run's records, each once
    assert not (tmp_path / "shared" / run_folder.LOCK_FILE).exists()


def test_runs_started_at_once_get_folders_of_their_own(tmp_path, tiny):
    runs = [start(tmp_path, "gpt2exp.train", *tiny) for _ in range(3)]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    folders = run_folders(tmp_path)
    assert len(folders) == 3 and folders == sorted(folders)
    assert all(len(read_jsonl(folder / "metrics.jsonl")) == len(read_jsonl(folders[0] / "metrics.jsonl"))
               for folder in folders)


def newest_step(checkpoints: Path) -> int | None:
    found = step_checkpoints(checkpoints)
    return int(found[-1].stem.split("-")[1]) if found else None


def last_logged_step(metrics: Path) -> int:
    return max((m["step"] for m in read_jsonl(metrics)), default=-1) if metrics.exists() else -1


def kill_when(process: subprocess.Popen, condition, timeout: float = 120) -> None:
    """SIGKILL `process` at a moment when `condition()` holds: checked while the process is
    stopped (SIGSTOP), so that what it checked is what the kill leaves."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the condition never held"
        process.send_signal(signal.SIGSTOP)
        if condition():
            process.kill()
            process.communicate()
            return
        process.send_signal(signal.SIGCONT)
        time.sleep(0.02)


def test_the_same_command_after_a_kill_resumes_its_own_folder(tmp_path, tiny, run_module):
    command = [*tiny, "hydra.run.dir=requeued", "trainer.resume=auto", "trainer.max_steps=120",
               "trainer.eval_freq=10", "trainer.checkpoint_freq=10"]
    checkpoints, metrics = tmp_path / "requeued" / "checkpoints", tmp_path / "requeued" / "metrics.jsonl"
    first = start(tmp_path, "gpt2exp.train", *command)
    # Past a checkpoint at step 40 or later, with records after it that the resumed run redoes.
    kill_when(first, lambda: (newest_step(checkpoints) or 0) >= 40 and last_logged_step(metrics) > newest_step(
        checkpoints))
    killed_at = newest_step(checkpoints)
    assert killed_at < 120 and last_logged_step(metrics) > killed_at
    again = run_module("gpt2exp.train", *command)
    assert again.returncode == 0, again.stderr
    assert f"resuming {tmp_path / 'requeued'} from {checkpoints / f'step-{killed_at:08d}.pt'}" in again.stdout
    steps = [m["step"] for m in read_jsonl(metrics) if "val/loss" in m]
    assert steps == list(range(0, 121, 10))
    assert [m["step"] for m in read_jsonl(metrics) if "train/batch_loss" in m] == list(range(1, 121))


def test_the_same_command_after_a_kill_before_the_first_checkpoint_starts_afresh(tmp_path, tiny, run_module):
    """The re-queue recipe (`hydra.run.dir=X trainer.resume=auto`), killed before its first
    checkpoint: the same command again trains, in that folder, keeping the folder's other files."""
    folder = user_data(tmp_path / "requeued")
    command = [*tiny, "hydra.run.dir=requeued", "trainer.resume=auto", "trainer.max_steps=60",
               "trainer.eval_freq=20"]
    checkpoints, metrics = folder / "checkpoints", folder / "metrics.jsonl"
    first = start(tmp_path, "gpt2exp.train", *command)
    kill_when(first, lambda: last_logged_step(metrics) >= 1)
    assert not step_checkpoints(checkpoints) and last_logged_step(metrics) >= 1
    users = {name: digest for name, digest in snapshot(folder).items() if name.startswith(("important", "notes"))}
    (folder / run_folder.LOCK_FILE).unlink()  # the kill's stale lock: the next run takes it over and removes it
    killed = snapshot(folder)

    explicit = run_module("gpt2exp.train", *command[:-3], "trainer.resume=requeued", *command[-2:])
    other = run_module("gpt2exp.train", *command, "model.emb_dim=64")
    for refused, says in ((explicit, "no usable checkpoint in"), (other, "model.emb_dim")):
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and says in refused.stderr, refused.stderr
    assert snapshot(folder) == killed

    again = run_module("gpt2exp.train", *command)
    assert again.returncode == 0, again.stderr
    assert "holds this run's config and no checkpoint yet: starting afresh in it" in again.stdout
    assert [m["step"] for m in read_jsonl(metrics) if "val/loss" in m] == [0, 20, 40, 60]
    assert [m["step"] for m in read_jsonl(metrics) if "train/batch_loss" in m] == list(range(1, 61))
    assert load_checkpoint(checkpoints / "last.pt")["step"] == 60
    assert {name: snapshot(folder)[name] for name in users} == users


def test_a_stale_lock_from_a_dead_run_is_taken_over(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / run_folder.LOCK_FILE).write_text('{"pid": 999999, "host": "gone"}')
    claimed = run_folder.claim(folder, key="hydra.run.dir")
    other = subprocess.run([sys.executable, "-c", "from gpt2exp.runs import folder as run_folder; "
                            f"run_folder.claim({str(folder)!r}, key='hydra.run.dir')"], capture_output=True, text=True)
    assert other.returncode != 0 and "is in use by another run (pid" in other.stderr
    claimed.release()
    assert not (folder / run_folder.LOCK_FILE).exists()
