"""The sweep's model store: one job trains a training config, the others wait and reuse it."""
import errno
import fcntl
import json
import logging
import os
import signal
import socket
import threading

import pytest

from gpt2exp.errors import UserError
from gpt2exp.runs.tracking import Tracker
from gpt2exp.training.reuse import adopt, claim, training_key

CONFIG = {"model": {"emb_dim": 32}, "optimizer": {"lr": 1e-3}, "decoding": {"temperature": 0.0},
          "logger": {"mode": "offline"}, "trainer": {"reuse_wait_minutes": 60.0}, "seed": 1}


def test_key_ignores_decoding_and_logging_only():
    key = training_key(CONFIG)
    assert key == training_key({**CONFIG, "decoding": {"temperature": 1.5}, "logger": {"mode": "online"},
                                "trainer": {"reuse_wait_minutes": 5}})
    assert key != training_key({**CONFIG, "model": {"emb_dim": 64}})
    assert key != training_key({**CONFIG, "seed": 2})


def publish(slot, tmp_path, val_loss=1.5):
    files = {}
    for name in ("checkpoint", "metrics", "loss_plot"):
        files[name] = tmp_path / f"{name}.src"
        files[name].write_text(name)
    slot.publish(**files, summary={"final/val_loss": val_loss})


def test_first_job_trains_later_jobs_reuse(tmp_path):
    store = tmp_path / ".trained"
    with claim(store, "k", {"job": 0}, wait_minutes=1) as slot:
        assert slot.trained is None
        publish(slot, tmp_path)
    with claim(store, "k", {"job": 1}, wait_minutes=1) as slot:
        trained = slot.trained
    assert trained.owner == {"job": 0} and trained.summary == {"final/val_loss": 1.5}
    assert trained.checkpoint.read_text() == "checkpoint" and trained.metrics.read_text() == "metrics"
    with claim(store, "other", {"job": 2}, wait_minutes=1) as slot:
        assert slot.trained is None


def test_a_failed_training_lets_the_next_job_train(tmp_path):
    with pytest.raises(RuntimeError), claim(tmp_path, "k", {"job": 0}, wait_minutes=1) as slot:
        assert slot.trained is None
        raise RuntimeError("out of memory")
    with claim(tmp_path, "k", {"job": 1}, wait_minutes=1) as slot:
        assert slot.trained is None


def test_a_waiting_job_gets_the_model_when_it_is_published(tmp_path):
    got = {}
    with claim(tmp_path, "k", {"job": 0}, wait_minutes=10, poll_s=0.01) as slot:

        def wait():
            with claim(tmp_path, "k", {"job": 1}, wait_minutes=10, poll_s=0.01) as other:
                got["trained"] = other.trained

        waiter = threading.Thread(target=wait)
        waiter.start()
        waiter.join(0.2)
        assert waiter.is_alive()
        publish(slot, tmp_path)
    waiter.join(5)
    assert got["trained"].owner == {"job": 0}


def test_a_lock_file_left_by_a_job_on_another_host_holds_nothing(tmp_path):
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "lock").write_text(json.dumps({"pid": 4242, "host": "node7", "job": 3}))
    with claim(tmp_path, "k", {"job": 1}, wait_minutes=10, poll_s=0.01) as slot:
        assert slot.trained is None and slot.shared


def wait_in_thread(tmp_path, **options):
    got = {}

    def wait():
        with claim(tmp_path, "k", {"job": 1, "run_dir": "sweep/1"}, poll_s=0.01, **options) as slot:
            got["slot"] = slot

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    return waiter, got


def test_a_waiting_job_says_who_holds_the_lock_and_trains_its_own_model_after_the_bound(tmp_path, holder, caplog):
    caplog.set_level(logging.WARNING, logger="gpt2exp.training.reuse")
    waiter, got = wait_in_thread(tmp_path, wait_minutes=0.005)
    waiter.join(120)  # a hang guard only: the wait is 0.3 s
    assert not waiter.is_alive()
    slot = got["slot"]
    assert slot.trained is None and not slot.shared
    publish(slot, tmp_path)
    assert not (tmp_path / "k" / "trained.json").exists()  # the holder's to publish
    waiting, gave_up = [r.getMessage() for r in caplog.records]
    assert f"job 3 (pid {holder.pid} on {socket.gethostname()}" in waiting and "run folder sweep/3" in waiting
    assert f"'{tmp_path / 'k' / 'lock'}'" in waiting and "up to 0.005 min (trainer.reuse_wait_minutes)" in waiting
    assert "this job trains its own model" in gave_up


def test_a_killed_holder_frees_the_lock_at_once(tmp_path, holder):
    waiter, got = wait_in_thread(tmp_path, wait_minutes=60)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    waiter.join(120)  # a hang guard only
    assert not waiter.is_alive()
    assert got["slot"].trained is None and got["slot"].shared


def test_adopting_a_model_completes_the_run_folder(tmp_path):
    metrics = [{"step": 0, "val/loss": 10.0}, {"step": 5, "val/loss": 7.0}]
    with claim(tmp_path / "store", "k", {"job": 0, "run_dir": "sweep/0"}, wait_minutes=1) as slot:
        sources = {name: tmp_path / name for name in ("checkpoint", "loss_plot")}
        for path in sources.values():
            path.write_bytes(b"x")
        (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
        slot.publish(**sources, metrics=tmp_path / "metrics.jsonl", summary={"final/val_loss": 7.0})
    with claim(tmp_path / "store", "k", {"job": 1}, wait_minutes=1) as slot:
        run_dir = tmp_path / "sweep" / "1"
        with Tracker(run_dir, config={}, backends=()) as tracker:
            summary = adopt(slot.trained, run_dir, tracker)
    assert summary == {"final/val_loss": 7.0, "reused_from": {"job": 0, "run_dir": "sweep/0"}}
    assert [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == metrics
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == b"x" and (run_dir / "loss.png").is_file()


def test_a_store_without_file_locks_is_one_line_instead_of_a_wait_that_could_not_end(tmp_path, monkeypatch):
    """A file system without flock (NFS mounted nolock, Lustre without -o flock): no waiter
    there could tell a live holder from a dead one, so the job says so and stops."""
    def no_locks(*args):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(UserError) as error, claim(tmp_path, "k", {"job": 1}, wait_minutes=60):
        pass
    assert str(error.value) == (f"model store: cannot lock '{tmp_path / 'k' / 'lock'}' (No locks available); sweep jobs "
                                "share a trained model only where the file system has file locks (flock): put "
                                "hydra.sweep.dir on one")


@pytest.mark.parametrize("link", ["symlink", "hard link"])
def test_a_lock_file_that_is_a_link_is_refused_and_its_target_left_as_it_was(tmp_path, link):
    victim = tmp_path / "important.txt"
    victim.write_text("a user's own file\n")
    (tmp_path / "k").mkdir()
    lock = tmp_path / "k" / "lock"
    if link == "hard link":
        os.link(victim, lock)
    else:
        lock.symlink_to(victim)
    with pytest.raises(UserError, match=f"model store: '{lock}' is not a lock file of its own"), \
            claim(tmp_path, "k", {"job": 1}, wait_minutes=60):
        pass
    assert victim.read_text() == "a user's own file\n"
