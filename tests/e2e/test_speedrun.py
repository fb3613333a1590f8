"""The speedrun presets through the real entrypoint: a seed sweep of both at a tiny size trains
(Muon and the model options included), and compare reports each preset over its seeds."""

import csv

from helpers import TINY

from gpt2exp.cli.compare import compare


def test_a_seed_sweep_of_both_presets_trains_and_compares_over_seeds(run_module, text_file, tmp_path):
    result = run_module("gpt2exp.train", "-m", "experiment=speedrun,speedrun_baseline", "seed=1,2", *TINY,
                        "data=text", f"data.path={text_file}", "trainer.grad_accum=1", "trainer.max_steps=2",
                        "trainer.eval_freq=1", "trainer.eval_iter=1", "decoding.max_new_tokens=4", "logger=none",
                        "hydra.sweep.dir=sweep")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("done: val loss") == 4
    written = compare([tmp_path / "sweep"], metric="best_val_loss")
    with written["seeds_csv"].open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["setting"], r["runs"], r["best_val_loss n"]) for r in rows] == [
        ("experiment=speedrun", "2", "2"), ("experiment=speedrun_baseline", "2", "2")]
    assert all(0 < float(r["best_val_loss mean"]) < 11 for r in rows)
