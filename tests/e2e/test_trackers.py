"""Several trackers at once through ``python -m gpt2exp.train -m``: a decoding sweep whose second
job reuses the first's model, logged to W&B (offline), TensorBoard and CSV."""

import csv

from helpers import TINY
from helpers.wandb_reader import find_wandb_file, read_run


def test_a_decoding_sweep_logs_each_job_to_every_tracker_in_its_own_folder(run_module, text_file, tmp_path):
    result = run_module("gpt2exp.train", "-m", *TINY, "data=text", f"data.path={text_file}", "trainer.max_steps=2",
                        "trainer.eval_freq=1", "trainer.eval_iter=1", "decoding=sample", "decoding.max_new_tokens=4",
                        "decoding.temperature=0.5,1.5", "logger=[wandb,tensorboard,csv]", "hydra.sweep.dir=sweep")
    assert result.returncode == 0, result.stderr
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for job in ("0", "1"):  # job 1 reuses job 0's model: its training curve is job 0's, its samples its own
        run_dir = tmp_path / "sweep" / job
        history = read_run(find_wandb_file(run_dir))["history"]
        assert [row["_step"] for row in history if "gen/nll" in row] == [2]  # W&B dropped job 1's, at a past step
        events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
        assert [event.step for event in events.Scalars("val/loss")] == [0, 1, 2]
        assert [event.step for event in events.Scalars("gen/nll")] == [2]
        with (run_dir / "metrics.csv").open(newline="") as file:
            rows = list(csv.DictReader(file))
        assert [row["step"] for row in rows] == ["0", "1", "2"]
        assert rows[-1]["gen/nll"] and rows[-1]["val/loss"] and not rows[0]["gen/nll"]
