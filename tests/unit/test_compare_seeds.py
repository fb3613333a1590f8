"""`python -m gpt2exp.compare` over seeds: runs that differ only in `seed` are one setting with
its mean ± std and Welch's p-value; metrics read off each run's val loss curve; W&B groups."""

import csv
import math
import statistics
from pathlib import Path

import pytest
from scipy import stats

from gpt2exp.cli import compare as compare_module
from gpt2exp.cli.compare import compare
from gpt2exp.errors import UserError
from gpt2exp.runs.tracking import run_identity
from unit.test_compare import make_run, train_metrics

FINAL = {"speedrun": [3.0, 3.2, 3.1, 2.9], "baseline": [3.6, 3.5, 3.9]}


@pytest.fixture
def seed_sweep(tmp_path) -> Path:
    """Two settings, 4 and 3 seeds; each curve 10 -> 5 -> its final val loss, 100 tokens a step."""
    sweep = tmp_path / "sweep"
    job = 0
    for experiment, finals in FINAL.items():
        for seed, final in enumerate(finals, start=1):
            make_run(sweep / str(job), [f"experiment={experiment}", f"seed={seed}"],
                     train_metrics([10.0, 5.0, final], tokens_per_step=100), summary={"steps": 2})
            job += 1
    return sweep


def welch_reference(a: list[float], b: list[float]) -> float:
    """Welch's t statistic and Welch-Satterthwaite degrees of freedom, two-sided p."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    t = (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return 2 * stats.t.sf(abs(t), df)


def test_each_setting_has_its_mean_std_and_welch_p_in_the_csv_and_markdown(seed_sweep):
    written = compare([seed_sweep])
    with written["seeds_csv"].open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["setting"], r["runs"]) for r in rows] == [("experiment=speedrun", "4"), ("experiment=baseline", "3")]
    for row, finals in zip(rows, FINAL.values()):
        assert float(row["val_loss mean"]) == pytest.approx(statistics.fmean(finals))
        assert float(row["val_loss std"]) == pytest.approx(statistics.stdev(finals))
    assert rows[0]["val_loss p vs experiment=speedrun"] == ""
    p = welch_reference(FINAL["baseline"], FINAL["speedrun"])
    assert float(rows[1]["val_loss p vs experiment=speedrun"]) == pytest.approx(p, rel=1e-9)
    markdown = written["markdown"].read_text()
    assert f"| experiment=baseline | 3 | {statistics.fmean(FINAL['baseline']):.4g} ± " in markdown
    assert f"| {p:.2g} |" in markdown


def test_the_reference_setting_can_be_chosen_and_must_exist(seed_sweep):
    compare([seed_sweep], reference="experiment=baseline")
    with (seed_sweep / "compare_seeds.csv").open(newline="") as f:
        assert "val_loss p vs experiment=baseline" in next(csv.reader(f))
    with pytest.raises(UserError, match=r"^--reference experiment=x: not a setting; the settings: experiment=spe"):
        compare([seed_sweep], reference="experiment=x")


def test_plots_show_each_settings_mean_with_its_spread(seed_sweep, monkeypatch):
    drawn = {}
    real = compare_module.plot_series

    def recording(series, path, **options):
        drawn[Path(path).name] = (series, options.get("spread"))
        return real(series, path, **options)

    monkeypatch.setattr(compare_module, "plot_series", recording)
    compare([seed_sweep])
    series, spread = drawn["val_loss.png"]
    assert list(series) == ["experiment=speedrun (4 seeds)", "experiment=baseline (3 seeds)"]
    assert list(series["experiment=baseline (3 seeds)"][0]) == [0, 100, 200]
    assert spread["experiment=baseline (3 seeds)"] == pytest.approx([0, 0, statistics.stdev(FINAL["baseline"])])
    series, spread = drawn["val_loss_vs_experiment.png"]  # seeds are samples, not the x axis
    assert series["val_loss"][1] == pytest.approx([statistics.fmean(v) for v in FINAL.values()])
    assert spread["val_loss"] == pytest.approx([statistics.stdev(v) for v in FINAL.values()])


def test_tokens_to_a_loss_and_the_loss_at_a_token_count_come_from_the_curve(seed_sweep):
    """Linear between evaluations: 10 -> 5 over tokens 0 -> 100 reaches 7.5 at 50 tokens; 5 -> 3.0
    over 100 -> 200 reaches 3.5 at 175, 5 -> 3.6 never; at 150 tokens that run is at (5 + 3.6) / 2."""
    rows = {r["run"]: r for r in compare([seed_sweep], metric="tokens_to:7.5")["rows"]}
    assert rows["0"]["tokens_to:7.5"] == pytest.approx(50.0)
    rows = {r["run"]: r for r in compare([seed_sweep], metric="tokens_to:3.5")["rows"]}
    assert rows["0"]["tokens_to:3.5"] == pytest.approx(175.0) and rows["4"]["tokens_to:3.5"] is None
    assert rows["5"]["tokens_to:3.5"] == 200  # its last evaluation is at 3.5
    with (seed_sweep / "compare_seeds.csv").open(newline="") as f:
        assert [r["tokens_to:3.5 n"] for r in csv.DictReader(f)] == ["4", "1"]
    rows = {r["run"]: r for r in compare([seed_sweep], metric="loss_at:150")["rows"]}
    assert rows["4"]["loss_at:150"] == pytest.approx(4.3)
    assert compare([seed_sweep], metric="loss_at:0.2k")["rows"][0]["loss_at:0.2k"] == pytest.approx(3.0)


def test_a_curve_metric_no_run_reaches_is_one_line(seed_sweep):
    with pytest.raises(UserError, match=r"^--metric tokens_to:1: no run's val loss curve gives it"):
        compare([seed_sweep], metric="tokens_to:1")


@pytest.mark.parametrize("metric", ["tokens_to:low", "loss_at:"])
def test_a_curve_metric_without_a_number_is_one_line(seed_sweep, metric):
    with pytest.raises(UserError, match=rf"^--metric {metric}: the value after ':' must be a number"):
        compare([seed_sweep], metric=metric)


def test_runs_without_repeated_seeds_get_no_seed_table(tmp_path):
    for job, seed in enumerate((1, 2)):
        make_run(tmp_path / str(job), [f"seed={seed}", f"model.emb_dim={32 * (job + 1)}"],
                 train_metrics([10.0, 5.0], tokens_per_step=10), summary={})
    assert "seeds_csv" not in compare([tmp_path]) and not (tmp_path / "compare_seeds.csv").exists()


def test_wandb_groups_a_seed_sweep_by_setting():
    identity = run_identity(sweep_dir="outputs/multirun/2026-12-07/10-00-00", swept={"seed", "experiment"},
                            overrides=["experiment=speedrun", "seed=3", "model=nano"])
    assert identity["group"] == "2026-12-07_10-00-00:experiment=speedrun"
    assert identity["name"] == "experiment=speedrun,seed=3"
    other = run_identity(sweep_dir="outputs/multirun/2026-12-07/10-00-00", swept={"model.emb_dim"},
                         overrides=["model.emb_dim=64"])
    assert other["group"] == "2026-12-07_10-00-00"
