import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
from helpers import TINY
from helpers.wandb_reader import find_wandb_file, read_run
from PIL import Image

from gpt2exp.data import sources
from gpt2exp.errors import UserError
from gpt2exp.network import unreachable
from gpt2exp.runs.trackers.wandb_run import resolve_mode
from gpt2exp.runs.tracking import Tracker, run_identity

CONFIG = {"model": {"emb_dim": 64, "n_layers": 2}, "optimizer": {"lr": 4e-4}, "tags": ["nano"], "seed": 123}


TRAIN_LOSSES = {0: 10.93, 5: 7.41, 10: 5.879, 15: 4.6123456789}


VAL_LOSSES = {0: 10.97, 5: 7.8, 10: 6.31, 15: 6.0}


PROMPT = "Every effort moves"


SAMPLES = [
    {
        "step": 5, "prompt": PROMPT, "text": PROMPT + " the",
        "settings": {"temperature": 1.0, "top_k": 40, "top_p": None},
    },
    {
        "step": 15, "prompt": PROMPT, "text": PROMPT + " you",
        "settings": {"temperature": 0.5, "top_k": None, "top_p": 0.9},
    },
]


REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wandb_offline(tmp_path_factory):
    """Offline W&B whose caches and staging files stay in a temp folder, not the home folder."""
    home = tmp_path_factory.mktemp("wandb_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
            mp.setenv(var, str(home / var.lower()))
        yield


@pytest.fixture(scope="module")
def logged_run(wandb_offline, tmp_path_factory):
    """One offline run with a falling loss curve, two samples, an image and a summary."""
    run_dir = tmp_path_factory.mktemp("run")
    image_path = run_dir / "loss.png"
    Image.new("RGB", (8, 6), "red").save(image_path)
    tracker = Tracker(run_dir, config=CONFIG, tags=["test"], group="tests")
    for step, loss in TRAIN_LOSSES.items():
        tracker.log_metrics({"train_loss": loss}, step=step)
        tracker.log_metrics({"val_loss": VAL_LOSSES[step]}, step=step)
    for sample in SAMPLES:
        tracker.log_sample(**sample)
    tracker.log_image("loss_plot", image_path, step=15)
    tracker.summary({"best_val_loss": 6.0})
    tracker.finish()
    tracker.finish()
    return run_dir, tracker, read_run(find_wandb_file(run_dir))


def test_offline_run_holds_exactly_what_was_logged(logged_run):
    run_dir, tracker, run = logged_run
    history = [row for row in run["history"] if "train_loss" in row]
    assert [row["_step"] for row in history] == list(TRAIN_LOSSES)
    assert [row["train_loss"] for row in history] == list(TRAIN_LOSSES.values())
    assert [row["val_loss"] for row in history] == list(VAL_LOSSES.values())
    assert run["config"] == CONFIG
    assert run["run_id"] == tracker.run_id
    assert tracker.url is None
    assert run["summary"]["best_val_loss"] == 6.0
    assert run["exit_code"] == 0


def test_offline_run_holds_samples_table_and_image(logged_run):
    _, _, run = logged_run
    table = run["tables"]["samples"]
    assert table["columns"] == ["step", "prompt", "text", "temperature", "top_k", "top_p"]
    assert table["data"] == [[s["step"], s["prompt"], s["text"], *s["settings"].values()] for s in SAMPLES]
    assert any(path.startswith("media/table/samples_") for path in run["files"])
    image = next(row["loss_plot"] for row in run["history"] if "loss_plot" in row)
    assert image["_type"] == "image-file" and (image["width"], image["height"]) == (8, 6)


def test_run_folder_files(logged_run):
    run_dir, _, _ = logged_run
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[:2] == [{"step": 0, "train_loss": 10.93}, {"step": 0, "val_loss": 10.97}]
    assert len(metrics) == 2 * len(TRAIN_LOSSES)
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert samples == SAMPLES
    assert json.loads((run_dir / "summary.json").read_text()) == {"best_val_loss": 6.0}


def test_trackers_in_sequence_are_distinct_runs(wandb_offline, tmp_path):
    run_ids = []
    for job in ("job0", "job1"):
        with Tracker(tmp_path / job, config={"job": job}) as tracker:
            tracker.log_metrics({"train_loss": 1.0}, step=0)
            run_ids.append(tracker.run_id)
    assert run_ids[0] != run_ids[1]
    for job, run_id in zip(("job0", "job1"), run_ids):
        run = read_run(find_wandb_file(tmp_path / job))
        assert (run["run_id"], run["config"], run["exit_code"]) == (run_id, {"job": job}, 0)


def test_crash_inside_with_block_still_finishes_run(wandb_offline, tmp_path):
    with pytest.raises(ZeroDivisionError), Tracker(tmp_path, config=CONFIG) as tracker:
        tracker.log_metrics({"train_loss": 2.0}, step=3)
        1 / 0
    run = read_run(find_wandb_file(tmp_path))
    assert run["exit_code"] == 1
    assert run["config"] == CONFIG
    assert run["history"][0]["train_loss"] == 2.0


@pytest.mark.parametrize("backends, mode", [((), "online"), (("wandb",), "disabled")])
def test_without_wandb_only_run_folder_files_are_written(tmp_path, backends, mode):
    script = f"""
import sys
from gpt2exp.runs.tracking import Tracker
with Tracker({str(tmp_path)!r}, config={{}}, backends={backends!r}, mode={mode!r}) as tracker:
    tracker.log_metrics({{"train_loss": 1.5}}, step=2)
    tracker.log_sample(step=2, prompt="a", text="a b", settings={{"temperature": 0.0}})
    tracker.log_image("plot", "missing.png")
    tracker.summary({{"final_loss": 1.5}})
    assert tracker.run_id is None and tracker.url is None
assert "wandb" not in sys.modules
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO_ROOT)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "samples.jsonl", "summary.json"]
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 2, "train_loss": 1.5}


def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as server:
        return server.getsockname()[1]


@pytest.mark.parametrize("mode", ["online", "offline", "disabled"])
def test_resolve_mode_keeps_explicit_mode(clean_env, monkeypatch, mode):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode(mode) == mode


def test_resolve_mode_auto_is_offline_without_key(clean_env):
    (clean_env / ".netrc").write_text("machine example.com login user password secret\n")
    assert resolve_mode("auto") == "offline"


def test_resolve_mode_auto_is_online_with_key_in_env(clean_env, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online"


def test_resolve_mode_auto_is_online_with_key_in_netrc(clean_env):
    (clean_env / ".netrc").write_text("machine 127.0.0.1\n  login user\n  password " + "x" * 40 + "\n")
    assert resolve_mode("auto") == "online"


def test_resolve_mode_auto_falls_back_to_offline_when_the_host_does_not_answer(clean_env, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    assert resolve_mode("auto") == "offline"
    assert "logging offline" in caplog.text and "wandb sync" in caplog.text
    with socket.create_server(("127.0.0.1", 0)) as silent:  # takes the connection, never answers
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        started = time.monotonic()
        assert resolve_mode("auto") == "offline"
        assert time.monotonic() - started < 25  # the probe gives up after 3 s; without a timeout it waits forever


def test_online_without_a_key_or_a_host_is_a_user_error(clean_env, monkeypatch):
    with pytest.raises(UserError, match="logger.mode=online: no W&B API key"):
        resolve_mode("online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(UserError, match="logger.mode=online: no answer from http://127.0.0.1:"):
        resolve_mode("online")
    monkeypatch.setenv("WANDB_MODE", "online")
    with pytest.raises(UserError, match="WANDB_MODE=online: no answer from"):
        resolve_mode("auto")


@pytest.mark.parametrize(
    "env_mode, expected", [("offline", "offline"), ("disabled", "disabled"), ("dryrun", "offline")]
)
def test_resolve_mode_auto_obeys_wandb_mode_env(clean_env, monkeypatch, env_mode, expected):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_MODE", env_mode)
    assert resolve_mode("auto") == expected


def test_unknown_modes_are_refused(clean_env, monkeypatch):
    from gpt2exp.config import LoggerConfig

    with pytest.raises(UserError, match="logger.mode"):
        LoggerConfig(mode="onlin")
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(UserError, match="WANDB_MODE"):
        resolve_mode("auto")


CHOICES = {"model": "nano", "data": "pydocs", "experiment": None, "hydra/launcher": "basic", "logger": "wandb"}


def test_sweep_jobs_share_a_group_named_after_the_sweep():
    identity = run_identity(sweep_dir="outputs/multirun/2026-11-27/08-22-56",
                            overrides=["model.context_length=64"], choices=CHOICES)
    assert identity == {
        "group": "2026-11-27_08-22-56",
        "name": "model.context_length=64",
        "tags": ["model:nano", "data:pydocs", "logger:wandb"],
    }


def test_run_name_leaves_out_logging_and_launching_overrides():
    overrides = ["logger.mode=offline", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "decoding.top_k=3",
                 "+model.x=1", "logger=none", "decoding=sample"]
    assert run_identity(sweep_dir="s", overrides=overrides)["name"] == "decoding.top_k=3,+model.x=1,decoding=sample"


def test_sweep_jobs_are_named_by_what_the_sweep_varies():
    overrides = ["model=small", "decoding.temperature=0.5", "trainer.max_steps=100", "decoding.top_k=3"]
    identity = run_identity(sweep_dir="s", overrides=overrides, swept={"decoding.temperature", "decoding.top_k"})
    assert identity["name"] == "decoding.temperature=0.5,decoding.top_k=3"


def test_values_the_user_set_win():
    identity = run_identity(group="mine", name="run-a", tags=["x", "model:nano"], sweep_dir="a/b",
                            overrides=["model.context_length=64"], choices=CHOICES)
    assert identity == {"group": "mine", "name": "run-a", "tags": ["x", "model:nano", "data:pydocs", "logger:wandb"]}


def test_single_run_has_no_group_or_name():
    assert run_identity(choices={"model": "small"}) == {"group": None, "name": None, "tags": ["model:small"]}


def test_an_offline_run_says_where_it_is_in_one_line(run_module, text_file, monkeypatch):
    """W&B's three-line banner (offline mode, the folder, `wandb leet`) is one gpt2exp line."""
    monkeypatch.delenv("WANDB_SILENT")
    result = run_module("gpt2exp.train", *TINY, "data=text", f"data.path={text_file}", "trainer.max_steps=1",
                        "trainer.eval_freq=1")
    assert result.returncode == 0, result.stderr
    [line] = [line for line in (result.stdout + result.stderr).splitlines()
              if line.startswith("wandb:") or "] W&B: " in line]
    assert "W&B: offline run; upload it with: wandb sync " in line and "/wandb/offline-run-" in line


def test_one_probe_tells_whether_wandb_or_the_hub_answers(clean_env, monkeypatch):
    """gpt2exp.network.unreachable is the probe of both: any HTTP status is an answer (the
    clean_env host answers 404); a closed port or a malformed address is none, in a few words."""
    answering = os.environ["WANDB_BASE_URL"]
    for url, answers in ((answering, True), (f"http://127.0.0.1:{closed_port()}", False), ("hub.example", False)):
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", url)
        assert sources._hub_reachable() is answers
        assert (unreachable(url, timeout_s=3) is None) is answers
    assert unreachable("hub.example", timeout_s=3) == "no answer from hub.example (unknown url type: 'hub.example')"


def test_metrics_logged_at_the_last_step_after_an_image_stay_in_the_history(wandb_offline, tmp_path):
    """A decoding sweep's job that reuses the trained model logs the training curve, the loss
    plot (no step given), then its own gen/* at the last step: W&B used to drop them ("Tried to
    log to step 5 that is less than the current step 6"); so with test/* after a run's plot."""
    image_path = tmp_path / "loss.png"
    Image.new("RGB", (8, 6), "red").save(image_path)
    with Tracker(tmp_path / "run", config={}, job_type="train") as tracker:
        for step in (0, 5):
            tracker.log_metrics({"tokens_seen": 64 * step, "train/loss": 10.0 - step}, step=step)
        tracker.log_image("loss_plot", image_path)
        tracker.log_metrics({"gen/distinct_2": 0.75}, step=5)
    history = read_run(find_wandb_file(tmp_path / "run"))["history"]
    assert [(row["_step"], row.get("gen/distinct_2")) for row in history] == [(0, None), (5, 0.75)]
    assert "loss_plot" in history[-1]
