"""Crash, interrupt and resume through ``python -m gpt2exp.train`` in subprocesses."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import SAMPLE_TEXT, TINY, run_folders
from helpers.wandb_reader import find_wandb_file, iter_records, read_run

from gpt2exp.training.step_checkpoints import step_checkpoints

# Two epochs of 12 batches, with dropout (so torch's RNG matters) and warmup + cosine schedule.
RESUMABLE = [
    *TINY, "model.drop_rate=0.1", "trainer.max_steps=24", "trainer.eval_freq=4", "trainer.eval_iter=2",
    "trainer.checkpoint_freq=4", "trainer.sample_freq=12", "decoding.max_new_tokens=4",
    "optimizer.warmup_steps=6", "optimizer.lr=3e-3",
]
STEPS = 24
COMPARED = ("train/batch_loss", "train/grad_norm", "lr", "train/loss", "val/loss", "tokens_seen", "epoch")


@pytest.fixture
def short_text(tmp_path) -> Path:
    path = tmp_path / "short.txt"
    path.write_text("\n".join(SAMPLE_TEXT.splitlines()[:100]), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def curve(run_dir: Path) -> list[dict]:
    return [{k: m[k] for k in ("step", *COMPARED) if k in m} for m in read_jsonl(run_dir / "metrics.jsonl")]


def start_train(cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gpt2exp.train", *args], cwd=cwd, env=dict(os.environ),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for_checkpoint(cwd: Path, process: subprocess.Popen, timeout: float = 120) -> Path:
    """The run folder, once its first step checkpoint exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        for run_dir in run_folders(cwd):
            if step_checkpoints(run_dir / "checkpoints"):
                return run_dir
        time.sleep(0.005)
    raise AssertionError("no checkpoint appeared")


def wandb_run_record(run_dir: Path):
    return next(r.run for r in iter_records(find_wandb_file(run_dir)) if r.WhichOneof("record_type") == "run")


def test_killed_run_resumes_onto_the_same_curve_bit_for_bit(run_module, short_text, tmp_path):
    args = [*RESUMABLE, "data=text", f"data.path={short_text}"]
    (tmp_path / "straight").mkdir()
    result = run_module("gpt2exp.train", *args, cwd=tmp_path / "straight")
    assert result.returncode == 0, result.stderr
    [straight] = run_folders(tmp_path / "straight")

    (tmp_path / "crash").mkdir()
    process = start_train(tmp_path / "crash", *args)
    killed = wait_for_checkpoint(tmp_path / "crash", process)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    newest = torch.load(step_checkpoints(killed / "checkpoints")[-1], weights_only=True)
    assert 0 < newest["step"] < STEPS

    result = run_module("gpt2exp.train", *args, f"trainer.resume={killed}", cwd=tmp_path / "crash")
    assert result.returncode == 0, result.stderr
    assert f"resuming {killed}" in result.stdout
    [resumed] = [d for d in run_folders(tmp_path / "crash") if d != killed]

    assert curve(resumed) == curve(straight)
    assert [m["step"] for m in curve(resumed) if "val/loss" in m] == list(range(0, STEPS + 1, 4))
    assert read_jsonl(resumed / "samples.jsonl") == read_jsonl(straight / "samples.jsonl")
    final_straight = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)
    final_resumed = torch.load(resumed / "checkpoints" / "last.pt", weights_only=True)
    assert final_resumed["step"] == STEPS
    for name, tensor in final_straight["model"].items():
        assert torch.equal(final_resumed["model"][name], tensor), name

    first_id = newest["extra"]["wandb"]["run_id"]
    assert list(killed.glob(f"wandb/offline-run-*-{first_id}"))
    resumed_run = wandb_run_record(resumed)
    assert resumed_run.run_id == first_id and resumed_run.run_group == first_id
    assert read_run(find_wandb_file(resumed))["exit_code"] == 0


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_a_checkpoint_and_says_how_to_resume(short_text, tmp_path, signum, status):
    args = [*RESUMABLE, "data=text", f"data.path={short_text}"]
    process = start_train(tmp_path, *args)
    run_dir = wait_for_checkpoint(tmp_path, process)
    os.kill(process.pid, signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == status, stderr
    last_line = stderr.strip().splitlines()[-1]
    assert last_line.startswith("interrupted at step "), stderr
    step = int(last_line.split()[3].rstrip(";"))
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"] == step
    assert read_run(find_wandb_file(run_dir))["exit_code"] == status

    command = shlex.split(last_line.split("resume with: ", 1)[1])
    assert command[:3] == ["python", "-m", "gpt2exp.train"] and command[-1] == f"trainer.resume={run_dir}"
    if signum == signal.SIGTERM:  # resume the printed way, and the automatic one
        command[-1] = "trainer.resume=auto"
    result = subprocess.run([sys.executable, *command[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"resuming {run_dir} from {run_dir / 'checkpoints'}" in result.stdout
    resumed = [d for d in run_folders(tmp_path) if d != run_dir][0]
    steps = [m["step"] for m in read_jsonl(resumed / "metrics.jsonl") if "val/loss" in m]
    assert steps == list(range(0, STEPS + 1, 4))


@pytest.mark.parametrize("loss, grad_norm, message", [
    (168536309760.0, float("nan"), "non-finite gradient norm (nan; loss 1.685e+11) at step 7"),
    (float("inf"), float("nan"), "non-finite loss (inf) and gradient norm (nan) at step 7"),
    (float("nan"), 3.0, "non-finite loss (nan) at step 7"),
])
def test_non_finite_step_names_which_of_loss_and_gradient_norm_it_was(loss, grad_norm, message):
    from gpt2exp.training.trainer import NonFiniteLoss

    assert str(NonFiniteLoss(7, loss, grad_norm)) == message


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(run_module, short_text, tmp_path):
    args = [*TINY, "data=text", f"data.path={short_text}", "trainer.max_steps=30", "trainer.checkpoint_freq=1",
            "optimizer.lr=1e6", "optimizer.warmup_steps=0"]
    result = run_module("gpt2exp.train", *args)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    # It names which of the loss and the gradient norm was NaN or inf (not a finite loss beside a NaN norm).
    assert re.match(r"error: non-finite (loss \((nan|-?inf)\)( and gradient norm \((nan|-?inf)\))?"
                    r"|gradient norm \((nan|-?inf); loss [-+.e\d]+\)) at step \d+;", line), line
    assert "trainer.skip_nonfinite=true" in line
    failed_step = int(line.split(" at step ")[1].split(";")[0])
    [run_dir] = run_folders(tmp_path)
    last_good = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert last_good["step"] == failed_step - 1 and str(run_dir / "checkpoints") in line
    assert all(torch.isfinite(t).all() for t in last_good["model"].values())
    assert read_run(find_wandb_file(run_dir))["exit_code"] == 1

    result = run_module("gpt2exp.train", *args, "trainer.skip_nonfinite=true", "trainer.max_steps=6", "logger=none")
    assert result.returncode == 0, result.stderr
    run_dir = [d for d in run_folders(tmp_path) if d != run_dir][0]
    skipped = [m["train/skipped_nonfinite"] for m in read_jsonl(run_dir / "metrics.jsonl") if "train/grad_norm" in m]
    assert skipped[0] == 0 and skipped[-1] >= 1
    assert json.loads((run_dir / "summary.json").read_text())["skipped_nonfinite"] == skipped[-1]


def test_resume_applies_changed_optimizer_settings_and_another_batch_size(run_module, short_text, tmp_path):
    args = [*RESUMABLE, "data=text", f"data.path={short_text}", "logger=none", "optimizer.warmup_steps=0"]
    first = run_module("gpt2exp.train", *args, "trainer.max_steps=10", "hydra.run.dir=first")
    assert first.returncode == 0, first.stderr
    changed = ["optimizer.lr=1e-3", "optimizer.weight_decay=0.5", "data.batch_size=8", "trainer.max_steps=30"]
    result = run_module("gpt2exp.train", *args, *changed, "trainer.resume=first", "hydra.run.dir=second")
    assert result.returncode == 0, result.stderr
    assert "this run's apply" in result.stdout
    after = [m for m in read_jsonl(tmp_path / "second" / "metrics.jsonl") if "lr" in m and m["step"] > 10]
    assert after and all(m["lr"] == pytest.approx(1e-3 * lr_ratio(m["step"], 30)) for m in after)
    final = torch.load(tmp_path / "second" / "checkpoints" / "last.pt", weights_only=True)
    assert final["step"] == 30 and final["config"]["optimizer"]["lr"] == 1e-3
    decay, no_decay = final["optimizer"]["param_groups"]
    assert (decay["lr"], decay["weight_decay"], no_decay["weight_decay"]) == (pytest.approx(1e-3 * lr_ratio(30, 30)),
                                                                             0.5, 0.0)


def lr_ratio(step: int, total: int) -> float:
    """The cosine schedule of RESUMABLE (min_lr_ratio 0.1) without warmup, at the step's start."""
    import math

    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - 1) / total)))


@pytest.mark.parametrize("save_optimizer", [True, False])
def test_train_longer_is_resume_auto_with_more_steps(run_module, text_file, tmp_path, save_optimizer):
    args = [*TINY, "data=text", f"data.path={text_file}", "trainer.eval_freq=4", "logger=none",
            f"trainer.save_optimizer={str(save_optimizer).lower()}"]
    first = run_module("gpt2exp.train", *args, "trainer.max_steps=8")
    assert first.returncode == 0, first.stderr
    longer = run_module("gpt2exp.train", *args, "trainer.max_steps=12", "trainer.eval_freq=2", "trainer.resume=auto")
    assert longer.returncode == 0, longer.stderr
    [first_dir, longer_dir] = run_folders(tmp_path)
    assert f"resuming {first_dir}" in longer.stdout and "resuming with this run's trainer.eval_freq=2, " \
        "trainer.max_steps=12" in longer.stdout
    assert ("AdamW's moments start afresh" in longer.stdout + longer.stderr) is not save_optimizer
    evals = [m["step"] for m in read_jsonl(longer_dir / "metrics.jsonl") if "val/loss" in m]
    assert evals[-3:] == [8, 10, 12] and 4 not in evals[evals.index(8):]
    assert torch.load(longer_dir / "checkpoints" / "last.pt", weights_only=True)["step"] == 12
    again = run_module("gpt2exp.train", *args, "trainer.max_steps=12", "trainer.resume=auto")
    assert again.returncode == 0 and "is already complete (step 12 of 12)" in again.stdout + again.stderr
    assert len(run_folders(tmp_path)) == 2


def test_auto_in_a_new_fixed_folder_never_continues_a_sibling(run_module, text_file, tmp_path):
    """A study of training lengths: `hydra.run.dir=runs/steps20 trainer.resume=auto` trains its
    own run, though runs/steps10 has this config but for `max_steps` (a plan key)."""
    args = [*TINY, "data=text", f"data.path={text_file}", "trainer.eval_freq=5", "logger=none", "trainer.resume=auto"]
    short = run_module("gpt2exp.train", *args, "trainer.max_steps=10", "hydra.run.dir=runs/steps10")
    assert short.returncode == 0, short.stderr
    sibling = {p: p.read_bytes() for p in (tmp_path / "runs" / "steps10").rglob("*") if p.is_file()}
    longer = run_module("gpt2exp.train", *args, "trainer.max_steps=20", "hydra.run.dir=runs/steps20")
    assert longer.returncode == 0, longer.stderr
    assert "resuming" not in longer.stdout and "starting afresh" in longer.stdout
    evals = [m["step"] for m in read_jsonl(tmp_path / "runs" / "steps20" / "metrics.jsonl") if "val/loss" in m]
    assert evals == [0, 5, 10, 15, 20]
    assert {p: p.read_bytes() for p in (tmp_path / "runs" / "steps10").rglob("*") if p.is_file()} == sibling
