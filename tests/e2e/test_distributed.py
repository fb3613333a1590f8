"""Data-parallel training through torchrun (2 CPU processes, gloo): the same losses as one process
with the whole batch, one run folder and one W&B run, a killed rank ends the job and resume
continues it bit for bit, also on another number of processes; FSDP's sharded training (the same
losses) resumed under DDP; SLURM's signals, a rank 0 that stops alone and a stray RANK variable."""

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import SAMPLE_TEXT, read_jsonl, run_folders
from helpers.tasks import MC_TASK, write_tasks

from gpt2exp.modeling.checkpoint import load_checkpoint
from gpt2exp.modeling.trained import load_trained_model
from gpt2exp.runs import folder as run_folder

SMALL = ["model.context_length=32", "model.emb_dim=32", "model.n_heads=2", "model.n_layers=1",
         "trainer.progress=false", "trainer.precision=fp32", "trainer.eval_freq=5", "optimizer.schedule=constant",
         "optimizer.warmup_steps=0"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gpt2exp.train"]
SINGLE = [sys.executable, "-m", "gpt2exp.train"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """The run the data-parallel ones are held against: one process, the whole batch of 8,
    20 steps (each test reads as many of its steps as it needs)."""
    root = tmp_path_factory.mktemp("one_process")
    (root / "corpus.txt").write_text(SAMPLE_TEXT, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "GPT2EXP_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "token-cache")}
    result = subprocess.run(
        [*SINGLE, *SMALL, "data=text", f"data.path={root / 'corpus.txt'}", "data.batch_size=8",
         "trainer.max_steps=20", "logger=none", "hydra.run.dir=one"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return root / "one"


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """torchrun, two processes of 4 sequences a step, 20 steps, W&B offline: the process and
    its root folder (cwd)."""
    root = tmp_path_factory.mktemp("two_processes")
    (root / "corpus.txt").write_text(SAMPLE_TEXT, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "GPT2EXP_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "token-cache")}
    for key in ("WANDB_API_KEY", "WANDB_SERVICE"):
        env.pop(key, None)
    result = subprocess.run(
        [*TORCHRUN, *SMALL, "data=text", f"data.path={root / 'corpus.txt'}", "data.batch_size=4",
         "trainer.max_steps=20", "logger.mode=offline"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300)
    return result, root


@pytest.fixture
def train(text_file, tmp_path):
    def _train(launcher: list[str], *args: str, timeout: float = 300, env: dict | None = None):
        command = [*launcher, *SMALL, "data=text", f"data.path={text_file}", *args]
        env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)

    return _train


def losses(run_dir: Path) -> tuple[list[float], list[float]]:
    """(each step's batch loss, each evaluation's val loss) from the run's metrics.jsonl."""
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    return ([m["train/batch_loss"] for m in metrics if "train/batch_loss" in m],
            [m["val/loss"] for m in metrics if "val/loss" in m])


def assert_close(first: list[float], second: list[float], tolerance: float = 1e-5) -> None:
    assert len(first) == len(second) and max(abs(a - b) for a, b in zip(first, second)) < tolerance, (first, second)


def test_two_processes_train_as_one_with_twice_the_batch(two_processes, one_process):
    two, root = two_processes
    assert two.returncode == 0, two.stderr
    [two_dir] = run_folders(root)  # one timestamped folder: the ranks agreed on its name
    (steps_two, evals_two), (steps_one, evals_one) = losses(two_dir), losses(one_process)
    assert len(steps_two) == 20 and len(evals_two) == 5
    assert_close(steps_two, steps_one)
    assert_close(evals_two, evals_one)
    tokens = [m["tokens_seen"] for m in read_jsonl(two_dir / "metrics.jsonl") if "tokens_seen" in m]
    assert tokens[-1] == 20 * 8 * 32  # the job's tokens, not rank 0's
    assert len(list(root.rglob("offline-run-*"))) == 1  # one W&B run, in the run folder
    assert list(two_dir.glob("wandb/offline-run-*"))
    assert two.stdout.count("done: val loss") == 1  # rank 0 alone speaks


def test_a_user_error_on_rank_0_ends_every_rank_with_its_line(train, tmp_path):
    """Rank 0 finds the mistake (here while reading the data); the other rank, waiting for it,
    exits with the same line instead of a traceback, and nothing is left behind."""
    result = train(TORCHRUN, "data.path=/nowhere/corpus.txt", "logger=none")
    assert result.returncode != 0
    assert result.stderr.count("error: data.path: no such file or folder: '/nowhere/corpus.txt'") == 2
    assert "Traceback" not in result.stderr.split("failed (exitcode")[0]
    assert not run_folders(tmp_path)


def test_a_rank_0_that_stops_alone_leaves_no_file_and_no_traceback(train, tmp_path):
    """Rank 0 refuses a live run's folder: the other rank stops with it, without a traceback or
    a file of its own (an empty train.log) in that folder."""
    live = tmp_path / "live"
    holder = run_folder.claim(live, key="hydra.run.dir")  # a live run's lock (this process's)
    (live / "metrics.jsonl").write_text('{"step": 1}\n')
    try:
        result = train(TORCHRUN, "logger=none", f"hydra.run.dir={live}")
        assert result.returncode != 0
        assert "error: hydra.run.dir:" in result.stderr and "is in use" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr.split("failed (exitcode")[0], result.stderr
        assert sorted(p.name for p in live.iterdir()) == [run_folder.LOCK_FILE, "metrics.jsonl"]
    finally:
        holder.release()


def test_a_killed_rank_ends_the_job_and_resume_continues_it(train, two_processes, text_file, tmp_path):
    """Rank 0, which owns the folder, is killed: the other rank ends with one line, and resume
    continues from the last checkpoint bit for bit (against two_processes' run when that
    checkpoint is step 10's, else a run of as many steps)."""
    command = [*TORCHRUN, *SMALL, "data=text", f"data.path={text_file}", "data.batch_size=4", "logger=none",
               "trainer.max_steps=100000", "trainer.checkpoint_freq=10", "hydra.run.dir=run"]
    job = subprocess.Popen(command, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        last = tmp_path / "run" / "checkpoints" / "last.pt"
        deadline = time.monotonic() + 120
        while not last.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert last.exists(), "no checkpoint within 2 minutes"
        os.kill(rank_pid(str(text_file), rank=0), signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = job.communicate(timeout=60)
        assert time.monotonic() - killed < 25 and job.returncode != 0  # a hang waits 30 s or more
        assert "Traceback" not in stderr.split("failed (exitcode")[0], stderr
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    step = load_checkpoint(last)["step"]
    assert step >= 10 and step % 10 == 0
    resumed = train(TORCHRUN, "data.batch_size=4", "logger=none", f"trainer.max_steps={step + 10}",
                    "trainer.checkpoint_freq=10", "hydra.run.dir=run", "trainer.resume=auto")
    assert resumed.returncode == 0, resumed.stderr
    assert f"(step {step}," in resumed.stdout
    assert load_checkpoint(last)["step"] == step + 10
    if step == 10:
        assert two_processes[0].returncode == 0, two_processes[0].stderr
        [straight_dir] = run_folders(two_processes[1])
    else:
        straight = train(TORCHRUN, "data.batch_size=4", "logger=none", f"trainer.max_steps={step + 10}",
                         "hydra.run.dir=straight")
        assert straight.returncode == 0, straight.stderr
        straight_dir = tmp_path / "straight"
    assert losses(tmp_path / "run")[0][-10:] == losses(straight_dir)[0][-10:]  # bit for bit


def test_resume_on_another_number_of_processes_continues_the_same_run(train, one_process, tmp_path):
    """Ten steps on two processes, ten more on one with the same job batch: the curve of twenty
    steps on one process. Resumed on one process with the same per-process batch, a step takes
    half the sequences, and a warning says so and how to keep them."""
    first = train(TORCHRUN, "data.batch_size=4", "trainer.max_steps=10", "logger=none", "hydra.run.dir=split")
    assert first.returncode == 0, first.stderr
    halved = train(SINGLE, "data.batch_size=4", "trainer.max_steps=11", "logger=none", "hydra.run.dir=halved",
                   f"trainer.resume={tmp_path / 'split'}")
    assert halved.returncode == 0, halved.stderr
    assert ("resuming with the number of processes changed from 2 to 1: a step takes 4 sequences instead of 8 "
            "(this run's apply); to keep the job's, set data.batch_size=8 or trainer.grad_accum=2") in halved.stdout
    rest = train(SINGLE, "data.batch_size=8", "trainer.max_steps=20", "logger=none", "hydra.run.dir=split",
                 "trainer.resume=auto")
    assert rest.returncode == 0, rest.stderr
    assert_close(losses(tmp_path / "split")[0], losses(one_process)[0])
    assert_close(losses(tmp_path / "split")[1], losses(one_process)[1])
    assert "a step takes" not in rest.stdout


def test_fsdp_trains_as_one_process_and_its_checkpoint_resumes_under_ddp_on_one(train, one_process, tmp_path):
    """trainer.strategy=fsdp (activation checkpointing on) for ten steps on two processes, ten more
    under ddp on one with the same job batch: the curve of twenty steps on one process, in fp32
    within 1e-5 (its 5 evaluation batches split 3 and 2 over the ranks); its checkpoint is any.
    Its in-loop task scores are the whole model's (gathered, every rank taking part), and scoring
    them changes no loss."""
    tasks = write_tasks(tmp_path / "tasks")
    first = train(TORCHRUN, "data.batch_size=4", "trainer.max_steps=10", "logger=none", "hydra.run.dir=sharded",
                  "trainer.strategy=fsdp", "trainer.activation_checkpointing=true", f"trainer.eval_tasks=[{MC_TASK}]",
                  "trainer.eval_tasks_limit=4", f"trainer.eval_tasks_include_path={tasks}")
    assert first.returncode == 0, first.stderr
    scored = [m for m in read_jsonl(tmp_path / "sharded" / "metrics.jsonl") if f"tasks/{MC_TASK}/acc" in m]
    assert [m["step"] for m in scored] == [0, 5, 10]
    model, checkpoint = load_trained_model(tmp_path / "sharded" / "checkpoints" / "last.pt")
    assert checkpoint["step"] == 10 and model.out_head.weight is model.tok_emb.weight
    rest = train(SINGLE, "data.batch_size=8", "trainer.max_steps=20", "logger=none", "hydra.run.dir=sharded",
                 "trainer.resume=auto")
    assert rest.returncode == 0, rest.stderr
    assert_close(losses(tmp_path / "sharded")[0], losses(one_process)[0])
    assert_close(losses(tmp_path / "sharded")[1], losses(one_process)[1])


def test_slurms_sigterm_and_torchruns_copy_stop_with_a_checkpoint_and_the_command_printed_resumes(text_file, tmp_path):
    """SLURM signals every process of a job step, and torchrun forwards its SIGTERM to the workers
    once more: one request to stop, so the run stops with a checkpoint at the step it stops at.
    The resume command it prints is torchrun's, and resumes on two processes as printed."""
    slow_steps = ["model.context_length=64", "data.batch_size=4", "trainer.grad_accum=8", "trainer.eval_freq=1000",
                  "trainer.eval_iter=1"]  # steps long enough for the second SIGTERM to come mid-step
    command = [*TORCHRUN, *SMALL, *slow_steps, "data=text", f"data.path={text_file}", "logger=none",
               "trainer.max_steps=100000", "hydra.run.dir=run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        metrics = tmp_path / "run" / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while not (metrics.exists() and "train/batch_loss" in metrics.read_text()):
            assert job.poll() is None and time.monotonic() < deadline, job.communicate()
            time.sleep(0.1)
        workers = [rank_pid(str(text_file), rank=rank) for rank in (0, 1)]
        for pid in workers:  # slurmstepd: every process of the step...
            os.kill(pid, signal.SIGTERM)
        time.sleep(0.3)
        job.send_signal(signal.SIGTERM)  # ...torchrun included, which sends its workers SIGTERM again
        _, stderr = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    [line] = [line for line in stderr.splitlines() if line.startswith("interrupted at step ")] or [stderr]
    assert "; resume with: " in line and "its last checkpoint" not in line, line  # a checkpoint at the step it stops
    step = int(line.split()[3].rstrip(";"))
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == step
    assert "Traceback" not in stderr.split("Received 15 death signal")[0], stderr

    printed = shlex.split(line.split("resume with: ", 1)[1])
    assert printed[:len(TORCHRUN)] == TORCHRUN and printed[-1] == f"trainer.resume={tmp_path / 'run'}", printed
    printed = [f"trainer.max_steps={step + 1}" if arg == "trainer.max_steps=100000" else arg for arg in printed]
    resumed = subprocess.run(printed, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"(step {step}," in resumed.stdout and "a step takes" not in resumed.stdout
    [resumed_dir] = run_folders(tmp_path)
    assert load_checkpoint(resumed_dir / "checkpoints" / "last.pt")["step"] == step + 1


def test_a_stray_rank_variable_is_a_single_process_run_that_saves_its_work(train, tmp_path):
    """RANK=1 left by a wrapper script, with no job around it: one warning, then an ordinary run
    (it used to train as a replica that saved and logged nothing, and exit 0)."""
    result = train(SINGLE, "trainer.max_steps=2", "logger=none", "hydra.run.dir=run", env={"RANK": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("warning: RANK=1 is set, but no distributed job around it") == 1, result.stderr
    assert "done: val loss" in result.stdout
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 2
    assert (tmp_path / "run" / ".hydra" / "config.yaml").is_file()


def test_the_other_ranks_wait_for_rank_0s_preparation_past_the_process_groups_timeout(tmp_path):
    """Rank 0 tokenizes a corpus while the others wait (`main_first`): longer than the process
    group's timeout (3 s here; 30 minutes by default) must not end the job."""
    script = tmp_path / "prepare.py"
    script.write_text(
        "import datetime, time\n"
        "import torch.distributed as dist\n"
        "from gpt2exp.training import distributed\n"
        "dist.init_process_group('gloo', timeout=datetime.timedelta(seconds=3))\n"
        "place = distributed.world()\n"
        "ready = distributed.main_first(lambda: time.sleep(6 if place.main else 0) or 'ready')\n"
        "print(f'rank {place.rank}: {ready}', flush=True)\n"
        "distributed.stop()\n")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    result = subprocess.run(command, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "rank 1: ready" in result.stdout


def test_a_slurm_style_job_of_two_tasks_trains_as_one_process(train, one_process, tmp_path):
    """hydra/launcher=submitit_local with two tasks: the tasks form the process group from
    submitit's variables, as SLURM tasks do, and train as one process with the whole batch
    (its 10 steps and 3 evaluations: the first of one_process's)."""
    job = train([*SINGLE, "-m"], "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2", "data.batch_size=4",
                "trainer.max_steps=10", "logger=none", "hydra.sweep.dir=sweep")
    assert job.returncode == 0, job.stderr
    (steps_job, evals_job), (steps_one, evals_one) = losses(tmp_path / "sweep" / "0"), losses(one_process)
    assert_close(steps_job, steps_one[:10])
    assert_close(evals_job, evals_one[:3])  # before the first step, after the 5th and the 10th


def rank_pid(marker: str, rank: int) -> int:
    """The pid of the worker with this RANK whose command line holds `marker` (torchrun starts
    its workers in sessions of their own)."""
    for proc in Path("/proc").iterdir():
        try:
            if marker in proc.joinpath("cmdline").read_text() and \
                    f"RANK={rank}".encode() in proc.joinpath("environ").read_bytes().split(b"\0"):
                return int(proc.name)
        except (OSError, ValueError):
            continue
    raise AssertionError(f"no rank {rank} worker")
