"""What a training run leaves on disk, through ``python -m gpt2exp.train``: checkpoints on a
schedule of their own, AdamW's state only in the newest, best.pt weights only, the bytes
reported, and a full disk refused before a write."""

import json
import re
import subprocess
import sys

import pytest
import torch
from helpers import TINY, run_folders

from gpt2exp.modeling.checkpoint import folder_bytes
from gpt2exp.training.step_checkpoints import step_checkpoints


def train(tmp_path, text_file, *args, steps=12):
    tmp_path.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "gpt2exp.train", *TINY, "data=text", f"data.path={text_file}",
         f"trainer.max_steps={steps}", "trainer.eval_freq=4", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )


def test_default_run_keeps_one_step_checkpoint_with_optimizer_and_best_weights_only(tmp_path, text_file):
    result = train(tmp_path, text_file)
    assert result.returncode == 0, result.stderr
    [run_dir] = run_folders(tmp_path)
    checkpoints = run_dir / "checkpoints"
    # Evaluated every 4 steps, but checkpointed by time (30 minutes) and at the end only.
    assert [p.name for p in step_checkpoints(checkpoints)] == ["step-00000012.pt"]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.pt", "last.pt", "step-00000012.pt"]
    last, best = (torch.load(checkpoints / name, weights_only=True) for name in ("last.pt", "best.pt"))
    assert isinstance(last["optimizer"], dict) and last["step"] == 12
    assert best["optimizer"] is None and best["model"].keys() == last["model"].keys()
    size = folder_bytes(checkpoints)
    assert size < 2 * (checkpoints / "last.pt").stat().st_size  # last.pt is a link, not a copy
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["checkpoint_bytes"] == size
    assert f"checkpoints take {size / 1e6:.1f} MB" in result.stdout


def test_checkpoints_by_steps_and_minutes_keep_the_newest(tmp_path, text_file):
    by_steps = train(tmp_path / "a", text_file, "trainer.checkpoint_freq=5", "trainer.keep_last=2",
                     "trainer.checkpoint_minutes=null", "trainer.keep_best=false")
    assert by_steps.returncode == 0, by_steps.stderr
    [run_dir] = run_folders(tmp_path / "a")
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "last.pt", "step-00000010.pt", "step-00000012.pt"]
    # A checkpoint at least every 0.00001 minutes: one after every step, the newest kept.
    by_time = train(tmp_path / "b", text_file, "trainer.checkpoint_minutes=0.00001", "trainer.keep_last=3",
                    "trainer.save_optimizer=false")
    assert by_time.returncode == 0, by_time.stderr
    [run_dir] = run_folders(tmp_path / "b")
    steps = [torch.load(p, weights_only=True) for p in step_checkpoints(run_dir / "checkpoints")]
    assert [c["step"] for c in steps] == [10, 11, 12] and all(c["optimizer"] is None for c in steps)


@pytest.fixture
def fake_disk(tmp_path):
    """A command line that runs the train entrypoint on a disk reporting `free` bytes free."""
    def command(free: int) -> list[str]:
        return [sys.executable, "-c", (
            "import collections, runpy, shutil, sys\n"
            f"shutil.disk_usage = lambda path: collections.namedtuple('u', 'total used free')(10**12, 0, {free})\n"
            "sys.argv[0] = 'gpt2exp.train'\n"
            "runpy.run_module('gpt2exp.train', run_name='__main__', alter_sys=True)\n")]
    return command


def test_a_disk_without_room_for_the_checkpoint_stops_the_run_with_one_line(tmp_path, text_file, fake_disk):
    result = subprocess.run(
        [*fake_disk(50_000), *TINY, "data=text", f"data.path={text_file}", "trainer.max_steps=4",
         "logger=none", "hydra.run.dir=run"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert re.search(r"cannot write \S+/checkpoints/best.pt \(No space left on device: the checkpoint needs "
                     r"6\.\d MB, 50\.0 kB are free\)", line), line
    assert not list((tmp_path / "run" / "checkpoints").glob("*.pt")), "no torn or partial checkpoint"
