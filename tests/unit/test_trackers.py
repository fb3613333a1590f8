"""The trackers besides W&B (logger=tensorboard, logger=csv, several at once): each tool's own
files, read back as its users read them (TensorBoard's EventAccumulator, the csv module)."""

import csv
import json
import sys

import pytest
from PIL import Image

from gpt2exp.cli.entrypoint import typed
from gpt2exp.config import TrainConfig
from gpt2exp.errors import UserError
from gpt2exp.runs.tracking import BACKENDS, Tracker

PROMPT = "Every effort moves"


def log_a_run(tracker: Tracker, image_path) -> None:
    """Steps 0 and 5 (train and val at each, as a run logs them), two samples at step 5, the
    loss plot, the gen/* figures after it at the last step, the summary."""
    for step, loss in ((0, 10.5), (5, 6.25)):
        tracker.log_metrics({"train/loss": loss, "lr": 1e-3}, step=step)
        tracker.log_metrics({"val/loss": loss + 1}, step=step)
    for i, word in enumerate(("the", "you")):
        tracker.log_sample(step=5, prompt=PROMPT, text=f"{PROMPT} {word}", settings={"temperature": 1.0, "sample": i})
    tracker.log_image("loss_plot", image_path)
    tracker.log_metrics({"gen/nll": 2.5}, step=5)
    tracker.summary({"final/val_loss": 7.25, "steps": 5})


@pytest.fixture
def image_path(tmp_path):
    path = tmp_path / "loss.png"
    Image.new("RGB", (8, 6), "red").save(path)
    return path


def events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0, "images": 0})
    return accumulator.Reload()


def scalars(accumulator, tag):
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def texts(accumulator, tag):
    return [(event.step, event.tensor_proto.string_val[0].decode()) for event in accumulator.Tensors(f"{tag}/text_summary")]


def test_tensorboard_holds_the_metrics_samples_plot_config_and_summary(tmp_path, image_path):
    with Tracker(tmp_path / "run", config={"model": {"emb_dim": 32}}, backends=("tensorboard",)) as tracker:
        log_a_run(tracker, image_path)
    run = events(tmp_path / "run")
    assert scalars(run, "train/loss") == [(0, 10.5), (5, 6.25)]
    assert scalars(run, "val/loss") == [(0, 11.5), (5, 7.25)]
    assert scalars(run, "gen/nll") == [(5, 2.5)]
    assert scalars(run, "lr") == [(0, pytest.approx(1e-3)), (5, pytest.approx(1e-3))]
    samples = texts(run, "samples")
    assert [step for step, _ in samples] == [5, 5]
    assert f"{PROMPT} the" in samples[0][1] and "temperature=1.0, sample=0" in samples[0][1]
    assert f"{PROMPT} you" in samples[1][1]
    assert [(image.step, image.width, image.height) for image in run.Images("loss_plot")] == [(5, 8, 6)]
    [(_, config)] = texts(run, "config")
    assert '"emb_dim": 32' in config
    [(_, summary)] = texts(run, "summary")
    assert "| final/val_loss | 7.25 |" in summary and "| steps | 5 |" in summary


def served_scalars(run_dir, tag):
    """The (step, value) points TensorBoard's Python loader (`tensorboard --load_fast=false`) serves."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    accumulator = EventAccumulator(str(run_dir / "tensorboard"))
    accumulator.Reload()
    return [(event.step, tensor_util.make_ndarray(event.tensor_proto).item()) for event in accumulator.Tensors(tag)]


def test_tensorboard_of_a_resumed_run_shows_the_curve_up_to_its_checkpoint_then_the_new_steps(tmp_path):
    """Resumed in its own folder from step 5 of a run that logged up to step 10 (steps 6 to 10
    gone, for every reader), and resumed into a new folder (the curve carried over)."""
    run_dir = tmp_path / "run"
    with Tracker(run_dir, config={}, backends=("tensorboard",)) as tracker:
        for step in (0, 5, 10):
            tracker.log_metrics({"train/loss": 10.0 - step}, step=step)
        tracker.log_sample(step=10, prompt=PROMPT, text="gone", settings={})
    foreign = tmp_path / "resumed" / "tensorboard" / "events.out.tfevents.1.someone-else"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"not gpt2exp's")
    for resumed_dir in (run_dir, tmp_path / "resumed"):
        with Tracker(resumed_dir, config={}, backends=("tensorboard",)) as tracker:
            tracker.carry_over(run_dir, up_to_step=5)
            tracker.log_metrics({"train/loss": 3.0}, step=6)
        assert scalars(events(resumed_dir), "train/loss") == [(0, 10.0), (5, 5.0), (6, 3.0)]
        assert served_scalars(resumed_dir, "train/loss") == [(0, 10.0), (5, 5.0), (6, 3.0)]
        assert "samples/text_summary" not in events(resumed_dir).Tags()["tensors"]  # step 10's sample
    assert foreign.read_bytes() == b"not gpt2exp's"  # another writer's file in the folder is left alone


def read_csv(path):
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.reader(file))


def test_csv_has_a_row_per_step_and_a_column_per_metric(tmp_path, image_path):
    with Tracker(tmp_path / "run", config={}, backends=("csv",)) as tracker:
        log_a_run(tracker, image_path)
        assert read_csv(tmp_path / "run" / "metrics.csv") == [  # step 5 is still open
            ["step", "train/loss", "lr", "val/loss"], ["0", "10.5", "0.001", "11.5"]]
    assert read_csv(tmp_path / "run" / "metrics.csv") == [
        ["step", "train/loss", "lr", "val/loss", "gen/nll"],
        ["0", "10.5", "0.001", "11.5", ""],
        ["5", "6.25", "0.001", "7.25", "2.5"],
    ]
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == [
        "metrics.csv", "metrics.jsonl", "samples.jsonl", "summary.json"]


def test_csv_of_a_resumed_run_holds_the_curve_up_to_its_checkpoint_then_the_new_steps(tmp_path):
    run_dir = tmp_path / "run"
    with Tracker(run_dir, config={}, backends=("csv",)) as tracker:
        for step in (0, 5, 10):
            tracker.log_metrics({"train/loss": 10.0 - step}, step=step)
            tracker.log_metrics({"val/loss": 11.0 - step}, step=step)
    with Tracker(run_dir, config={}, backends=("csv",)) as tracker:
        tracker.carry_over(run_dir, up_to_step=5)
        tracker.log_metrics({"train/loss": 3.0, "tokens_seen": 384}, step=6)
    assert read_csv(run_dir / "metrics.csv") == [
        ["step", "train/loss", "val/loss", "tokens_seen"],
        ["0", "10.0", "11.0", ""], ["5", "5.0", "6.0", ""], ["6", "3.0", "", "384"]]


@pytest.mark.parametrize(("logger", "backends"), [
    ("wandb", ["wandb"]), ("tensorboard", ["tensorboard"]), ("csv", ["csv"]), ("none", []),
    ("[wandb,tensorboard]", ["wandb", "tensorboard"]), ("[csv,tensorboard,wandb]", ["wandb", "tensorboard", "csv"]),
])
def test_logger_presets_pick_the_trackers_and_several_compose(compose_train, logger, backends):
    assert switched_on(typed(compose_train(f"logger={logger}"), TrainConfig)) == backends


def test_the_default_is_wandb_and_a_flag_adds_a_tracker(compose_train):
    cfg = typed(compose_train("logger.csv=true", "logger.project=mine"), TrainConfig)
    assert (switched_on(cfg), cfg.logger.project) == (["wandb", "csv"], "mine")


def switched_on(cfg: TrainConfig) -> list[str]:
    return [name for name in BACKENDS if getattr(cfg.logger, name)]


def test_tensorboard_without_its_package_is_one_line_and_nothing_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard: ImportError
    with pytest.raises(UserError, match=r"^logger.tensorboard=true needs the tensorboard package: "
                                        r"pip install 'gpt2exp\[tensorboard\]'$"):
        Tracker(tmp_path / "run", config={}, backends=("csv", "tensorboard"))
    assert not (tmp_path / "run").exists()


def test_summary_json_is_the_run_folder_s_whatever_the_trackers(tmp_path, image_path):
    with Tracker(tmp_path / "run", config={}, backends=("csv", "tensorboard")) as tracker:
        log_a_run(tracker, image_path)
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == {"final/val_loss": 7.25, "steps": 5}
