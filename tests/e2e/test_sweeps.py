"""Multiruns through ``python -m gpt2exp.train -m``: W&B groups, model reuse in decoding sweeps,
failed jobs, the submitit and Optuna plugins, and ``python -m gpt2exp.compare`` on the results."""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import joblib
import pytest
import yaml
from helpers import SAMPLE_TEXT, TINY, read_jsonl
from helpers.wandb_reader import find_wandb_file, read_run

# TINY without its context length, training for two steps with cheap evaluations and samples.
FAST = [o for o in TINY if not o.startswith("model.context_length")] + [
    "trainer.max_steps=2", "trainer.eval_freq=1", "trainer.eval_iter=1", "decoding.max_new_tokens=4",
]
TRAINED = "done: val loss"
REUSED = "reusing the model trained by job 0 (config hash "


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(SAMPLE_TEXT, encoding="utf-8")
    return path


def sweep(run_module, tmp_path, corpus, *args, flag=()):
    """Runs train in `tmp_path/sweep`; returns the process and the job folders by number."""
    result = run_module("gpt2exp.train", *flag, *FAST, "data=text", f"data.path={corpus}", "hydra.sweep.dir=sweep",
                        *args, cwd=tmp_path)
    jobs = sorted((p.parent for p in (tmp_path / "sweep").glob("*/.hydra")), key=lambda p: int(p.name))
    return result, jobs


def job_log(job: Path) -> str:
    return (job / "train.log").read_text()


def training_records(job: Path) -> list[dict]:
    """metrics.jsonl without the gen/* figures of the job's own final samples."""
    return [m for m in read_jsonl(job / "metrics.jsonl") if not any(k.startswith("gen/") for k in m)]


def summary(job: Path) -> dict:
    return json.loads((job / "summary.json").read_text())


@pytest.fixture(scope="module")
def context_sweep(tmp_path_factory, corpus):
    """Context lengths 16 and 32, and one (99999) longer than the text: that job fails."""
    tmp_path = tmp_path_factory.mktemp("context_sweep")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "GPT2EXP_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "token-cache")}
    env.pop("WANDB_API_KEY", None)
    result = subprocess.run(
        [sys.executable, "-m", "gpt2exp.train", "-m", *FAST, "data=text", f"data.path={corpus}",
         "hydra.sweep.dir=sweep", "model.context_length=16,32,99999"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    return result, tmp_path / "sweep"


def test_context_sweep_gives_one_wandb_run_per_job_in_one_group(context_sweep):
    _, sweep_dir = context_sweep
    runs = [read_run(find_wandb_file(sweep_dir / job)) for job in ("0", "1")]
    assert runs[0]["run_id"] != runs[1]["run_id"]
    assert {run["group"] for run in runs} == {"sweep"}
    assert [run["name"] for run in runs] == ["model.context_length=16", "model.context_length=32"]
    assert [run["config"]["model"]["context_length"] for run in runs] == [16, 32]
    assert all({"model:nano", "data:text"} <= set(run["tags"]) for run in runs)
    assert [run["exit_code"] for run in runs] == [0, 0]
    for job in ("0", "1"):
        assert {"metrics.jsonl", "samples.jsonl", "loss.png", "checkpoints"} <= {
            p.name for p in (sweep_dir / job).iterdir()}


def test_a_failing_job_is_recorded_and_the_others_finish(context_sweep):
    result, sweep_dir = context_sweep
    failure = json.loads((sweep_dir / "2" / "failure.json").read_text())
    assert failure["status"] == "failed" and "context_length" in failure["error"]
    assert "model.context_length=99999" in failure["overrides"]
    assert summary(sweep_dir / "1")["final/val_loss"] > 0
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: 1 of 3 jobs failed (job 2;") and "context_length" in line


def test_compare_reports_every_job_and_draws_the_plots(context_sweep, run_module, tmp_path):
    _, sweep_dir = context_sweep
    result = run_module("gpt2exp.compare", str(sweep_dir), "--out", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr
    with (tmp_path / "report" / "compare.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["run"], r["status"], r["model.context_length"]) for r in rows] == [
        ("0", "ok", "16"), ("1", "ok", "32"), ("2", "failed", "99999")]
    assert all(float(r["val_loss"]) > 0 and float(r["tokens_per_sec"]) > 0 for r in rows[:2])
    assert "context_length" in rows[2]["error"]
    assert len((tmp_path / "report" / "compare.md").read_text().splitlines()) == 5
    for plot in ("val_loss.png", "val_loss_vs_model.context_length.png"):
        assert (tmp_path / "report" / plot).stat().st_size > 0
    assert "failed" in result.stdout


def test_decoding_sweep_through_train_trains_once(run_module, tmp_path, corpus):
    result, jobs = sweep(run_module, tmp_path, corpus, "experiment=decoding_sweep", "logger=none")
    assert result.returncode == 0, result.stderr
    assert len(jobs) == 6
    logs = [job_log(job) for job in jobs]
    assert TRAINED in logs[0] and all(TRAINED not in log and REUSED in log for log in logs[1:])
    settings = [json.loads((job / "samples.jsonl").read_text().splitlines()[-1])["settings"] for job in jobs]
    assert {(s["temperature"], s["top_k"]) for s in settings} == {(t, k) for t in (0.5, 1.0, 1.5) for k in (3, 40)}
    owner = summary(jobs[0])
    for job in jobs[1:]:
        assert summary(job)["reused_from"]["job"] == 0
        assert summary(job)["final/val_loss"] == owner["final/val_loss"]
        assert training_records(job) == training_records(jobs[0])
        [own] = [m for m in read_jsonl(job / "metrics.jsonl") if "gen/nll" in m]
        assert summary(job)["gen/nll"] == own["gen/nll"]
        assert (job / "checkpoints" / "last.pt").is_file() and (job / "loss.png").is_file()


def test_submitit_local_jobs_run_in_parallel_and_share_the_model(run_module, tmp_path, corpus):
    """Local submitit jobs share the trained model; the console names each job's log file (where its
    output goes) as the job is submitted."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    result, jobs = sweep(run_module, tmp_path, corpus, "hydra/launcher=submitit_local", "logger=none",
                         "decoding=sample", "decoding.temperature=0.5,1.5", flag=["-m"])
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "sweep" / ".submitit").is_dir() and len(jobs) == 2
    announced = dict(re.findall(r"\t#(\d+) log: (\S+) \(stderr: \S+\)", result.stdout))
    assert sorted(announced) == ["0", "1"], result.stdout
    for number, log in announced.items():
        assert job_log(tmp_path / "sweep" / number).splitlines()[0] in Path(log).read_text().splitlines()
    trained = [job for job in jobs if TRAINED in job_log(job)]
    assert len(trained) == 1
    [reused] = [job for job in jobs if job not in trained]
    assert summary(reused)["reused_from"]["job"] == int(trained[0].name)
    # The jobs differ in decoding alone: one trains, the other waits for its model, so the one that
    # computes takes every core (OMP_NUM_THREADS where set, as under pytest-xdist).
    threads = int(os.environ.get("OMP_NUM_THREADS", 0)) or joblib.cpu_count()
    assert all(f"PyTorch threads: {threads} (this job's share of the cores)" in job_log(job) for job in jobs)


@pytest.fixture(scope="module")
def optuna_sweep(tmp_path_factory, corpus):
    """Two Optuna trials of conf/hparams_search/optuna.yaml; the process and the job folders."""
    tmp_path = tmp_path_factory.mktemp("optuna_sweep")
    env = {**os.environ, "GPT2EXP_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "token-cache")}
    result = subprocess.run(
        [sys.executable, "-m", "gpt2exp.train", *FAST, "data=text", f"data.path={corpus}", "hydra.sweep.dir=sweep",
         "hparams_search=optuna", "hydra.sweeper.n_trials=2", "logger=none"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    jobs = sorted((p.parent for p in (tmp_path / "sweep").glob("*/.hydra")), key=lambda p: int(p.name))
    return result, jobs


def test_optuna_sweep_minimises_the_final_val_loss(optuna_sweep):
    result, jobs = optuna_sweep
    tmp_path = jobs[0].parent.parent
    assert result.returncode == 0, result.stderr
    assert len(jobs) == 2
    losses = [summary(job)["final/val_loss"] for job in jobs]
    lrs = [next(o for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
                if o.startswith("optimizer.lr=")) for job in jobs]
    assert lrs[0] != lrs[1]
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(min(losses))


def test_compare_draws_an_optuna_sweep_on_the_scales_it_searched(optuna_sweep, monkeypatch, tmp_path):
    """The learning rate, searched on a log scale (tag(log, ...) in hparams_search=optuna), gets a
    log axis; the other parameters that differ between the trials get linear ones."""
    from matplotlib.figure import Figure

    from gpt2exp.cli.compare import compare

    _, jobs = optuna_sweep
    saved, savefig = {}, Figure.savefig

    def record(figure, path, *args, **kwargs):
        saved[Path(path).name] = {ax.get_xlabel(): ax.get_xscale() for ax in figure.axes}
        return savefig(figure, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    written = compare([jobs[0].parent], out_dir=tmp_path)
    assert written["metric_plot"] == tmp_path / "val_loss_vs_params.png"
    overrides = [dict(o.split("=", 1) for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
                 for job in jobs]
    differing = [key for key in ("optimizer.lr", "optimizer.weight_decay", "optimizer.warmup_steps")
                 if overrides[0][key] != overrides[1][key]]
    assert "optimizer.lr" in differing
    assert saved["val_loss_vs_params.png"] == {key: "log" if key == "optimizer.lr" else "linear" for key in differing}


def test_compare_on_a_generate_sweep(run_module, tmp_path, train_run):
    result = run_module("gpt2exp.generate", "-m", f"ckpt={train_run}", "decoding.temperature=0.5,1.5",
                        "decoding.max_new_tokens=4", "logger=none", "hydra.sweep.dir=gen", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = run_module("gpt2exp.compare", str(tmp_path / "gen"), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    with (tmp_path / "gen" / "compare.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["status"], r["decoding.temperature"]) for r in rows] == [("ok", "0.5"), ("ok", "1.5")]
    for key in ("gen/tokens_per_sec", "gen/distinct_1", "gen/distinct_2", "gen/repeat_4gram_rate", "gen/nll"):
        assert all(r[key] != "" for r in rows)
    assert (tmp_path / "gen" / "gen_nll_vs_decoding.temperature.png").stat().st_size > 0


def test_a_joblib_job_killed_by_a_signal_fails_alone(tmp_path, corpus):
    """The long job exceeds a CPU-time limit and the kernel kills it (SIGXCPU), as the OOM killer
    kills a job (SIGKILL); the short one finishes, and the sweep reports the killed one."""
    import resource

    def limit_cpu() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (20, 30))

    result = subprocess.run(
        [sys.executable, "-m", "gpt2exp.train", "-m", *FAST, "data=text", f"data.path={corpus}", "logger=none",
         "hydra.sweep.dir=sweep", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
         "trainer.max_steps=2,1000000"],
        cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, timeout=300, preexec_fn=limit_cpu,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: 1 of 2 jobs failed (job 1;")
    assert "job process killed by SIGXCPU" in result.stderr
    assert TRAINED in job_log(tmp_path / "sweep" / "0")
    failure = json.loads((tmp_path / "sweep" / "1" / "failure.json").read_text())
    assert failure["error"] == "job process killed by SIGXCPU" and "trainer.max_steps=1000000" in failure["overrides"]


def test_parallel_joblib_jobs_report_progress_by_lines_not_bars(tmp_path, corpus):
    with_bars = [o for o in FAST if o != "trainer.progress=false"]
    result = subprocess.run(
        [sys.executable, "-m", "gpt2exp.train", "-m", *with_bars, "data=text", f"data.path={corpus}", "logger=none",
         "hydra.sweep.dir=sweep", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "optimizer.lr=1e-3,2e-3"],
        cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "train:" not in result.stderr and "step/s" not in result.stderr  # no tqdm bar
    assert "progress bars off: the jobs run in parallel" in job_log(tmp_path / "sweep" / "0")
    assert all(TRAINED in job_log(tmp_path / "sweep" / str(job)) for job in (0, 1))
    # Each job's share of the cores: OMP_NUM_THREADS where set (under pytest-xdist), else half of them.
    threads = int(os.environ.get("OMP_NUM_THREADS", 0)) or max(1, joblib.cpu_count() // 2)
    assert all(f"PyTorch threads: {threads} (this job's share of the cores)" in job_log(tmp_path / "sweep" / str(job))
               for job in (0, 1))


def test_a_joblib_sweep_of_fewer_jobs_than_cores_gives_each_job_its_share_of_them(tmp_path, corpus):
    """joblib alone would give each job cores / n_jobs threads, n_jobs (-1) being a worker per core."""
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    result = subprocess.run(
        [sys.executable, "-m", "gpt2exp.train", "-m", *FAST, "data=text", f"data.path={corpus}", "logger=none",
         "hydra.sweep.dir=sweep", "hydra/launcher=joblib", "optimizer.lr=1e-3"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    cores = joblib.cpu_count()
    assert f"{cores} PyTorch thread{'s' * (cores != 1)} for each job ({cores} cores over 1 job computing at once)" in (
        result.stdout)
    assert f"PyTorch threads: {cores} (this job's share of the cores)" in job_log(tmp_path / "sweep" / "0")
