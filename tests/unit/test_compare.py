"""The comparison report over run folders written the way train and generate write them."""

import csv
import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from gpt2exp.cli.compare import compare, main, search_spaces
from gpt2exp.errors import UserError


def make_run(folder: Path, overrides: list[str], metrics: list[dict] = (), summary: dict | None = None,
             failure: str | None = None, sweeper_params: dict | None = None) -> Path:
    """A run folder as train or generate leave it; `sweeper_params` goes where every sweep's job
    has its sweeper's search space, .hydra/hydra.yaml."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("seed: 1\n")
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"sweeper": {"params": sweeper_params}}}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    if failure is not None:
        (folder / "failure.json").write_text(json.dumps({"status": "failed", "job": 2, "error": failure}))
    return folder


def train_metrics(val_losses: list[float], tokens_per_step: int) -> list[dict]:
    return [{"step": i, "train/loss": v - 0.1, "val/loss": v, "train/perplexity": 1.0, "val/perplexity": 2.0,
             "tokens_seen": i * tokens_per_step, "tokens_per_sec": 100.0 * i} for i, v in enumerate(val_losses)]


@pytest.fixture
def context_sweep(tmp_path) -> Path:
    sweep = tmp_path / "multirun" / "2026-11-27" / "08-00-00"
    common = ["data=text", "data.path=corpus.txt"]
    for job, context in enumerate((64, 128)):
        make_run(sweep / str(job), [*common, f"model.context_length={context}"],
                 train_metrics([10.0, 8.0 - job, 7.0 - job], tokens_per_step=context), summary={"steps": 2})
    make_run(sweep / "2", [*common, "model.context_length=99999"], failure="text shorter than one window")
    (sweep / ".trained" / "abc").mkdir(parents=True)
    return sweep


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_one_row_per_job_with_its_swept_override_final_figures_and_failure(context_sweep):
    written = compare([context_sweep])
    rows = read_csv(context_sweep / "compare.csv")
    assert [(r["run"], r["status"], r["model.context_length"]) for r in rows] == [
        ("0", "ok", "64"), ("1", "ok", "128"), ("2", "failed", "99999")]
    assert "data.path" not in rows[0]
    assert [float(r["val_loss"]) for r in rows[:2]] == [7.0, 6.0] and rows[2]["val_loss"] == ""
    assert float(rows[0]["tokens_per_sec"]) == 150.0
    assert rows[2]["error"] == "text shorter than one window"
    markdown = (context_sweep / "compare.md").read_text().splitlines()
    assert markdown[0].startswith("| run | status | model.context_length |") and len(markdown) == 5
    assert "failed" in written["text"] and "text shorter than one window" in written["text"]


def test_plots_are_written(context_sweep):
    written = compare([context_sweep])
    assert written["val_loss_plot"] == context_sweep / "val_loss.png"
    assert written["metric_plot"] == context_sweep / "val_loss_vs_model.context_length.png"
    for path in (written["val_loss_plot"], written["metric_plot"]):
        with Image.open(path) as image:
            assert image.format == "PNG"


def test_generate_runs_show_decoding_figures(tmp_path):
    for job, (temperature, nll) in enumerate([(0.5, 3.0), (1.5, 4.5)]):
        make_run(tmp_path / "gen" / str(job), ["ckpt=last.pt", f"decoding.temperature={temperature}"],
                 [{"step": 0, "gen/tokens_per_sec": 50.0, "gen/distinct_1": 0.5, "gen/distinct_2": 0.7,
                   "gen/repeat_4gram_rate": 0.1, "gen/nll": nll}], summary={})
    written = compare([tmp_path / "gen"], out_dir=tmp_path / "report", metric="gen/nll")
    rows = read_csv(tmp_path / "report" / "compare.csv")
    assert [float(r["gen/nll"]) for r in rows] == [3.0, 4.5]
    assert {"gen/tokens_per_sec", "gen/distinct_1", "gen/distinct_2", "gen/repeat_4gram_rate"} <= set(rows[0])
    assert "val_loss" not in rows[0]
    assert written["metric_plot"].name == "gen_nll_vs_decoding.temperature.png"
    assert "val_loss_plot" not in written and not (tmp_path / "report" / "val_loss.png").exists()


def test_several_run_folders_are_named_from_their_common_parent(context_sweep, tmp_path):
    compare([context_sweep / "0", context_sweep / "1"], out_dir=tmp_path / "out")
    assert [r["run"] for r in read_csv(tmp_path / "out" / "compare.csv")] == ["0", "1"]


def test_bad_arguments_exit_2_with_one_line(context_sweep, tmp_path, capsys):
    for argv in ([str(tmp_path / "nothing")], [str(context_sweep), "--metric", "bleu"],
                 [str(context_sweep), "--param", "model.emb_dim"], [str(context_sweep), "--metric", "gen/nll"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    with pytest.raises(UserError, match="no run folders"):
        compare([context_sweep / ".trained"])


def test_no_run_with_the_metric_names_the_ones_they_have(context_sweep):
    with pytest.raises(UserError, match="^--metric gen/nll: no run logged it; they have train_loss, val_loss, "):
        compare([context_sweep], metric="gen/nll")


def test_a_decoding_sweep_plots_a_figure_that_differs_not_the_shared_val_loss(tmp_path):
    for job, (temperature, nll) in enumerate([(0.5, 3.0), (1.0, 3.5), (1.5, 4.5)]):
        make_run(tmp_path / "sweep" / str(job), ["decoding=sample", f"decoding.temperature={temperature}"],
                 [*train_metrics([10.0, 7.0], tokens_per_step=64),
                  {"step": 1, "gen/tokens_per_sec": 50.0, "gen/distinct_1": 0.5, "gen/distinct_2": 0.7,
                   "gen/repeat_4gram_rate": 0.1, "gen/nll": nll}], summary={})
    written = compare([tmp_path / "sweep"])
    assert written["metric_plot"].name == "gen_nll_vs_decoding.temperature.png"


def test_several_run_folders_plot_against_what_varies(tmp_path):
    make_run(tmp_path / "a", ["experiment=article", "optimizer.lr=1e-3"], train_metrics([10.0, 7.0], 64), {})
    make_run(tmp_path / "b", ["optimizer.lr=2e-3"], train_metrics([10.0, 6.0], 64), {})
    make_run(tmp_path / "c", ["optimizer.lr=4e-3"], train_metrics([10.0, 6.5], 64), {})
    written = compare([tmp_path / "a", tmp_path / "b", tmp_path / "c"], out_dir=tmp_path / "out")
    assert written["metric_plot"].name == "val_loss_vs_optimizer.lr.png"


@pytest.fixture
def saved_axes(monkeypatch) -> dict:
    """{PNG file name: {x label: x scale}} for each figure saved, read from its axes."""
    from matplotlib.figure import Figure

    saved, savefig = {}, Figure.savefig

    def record(figure, path, *args, **kwargs):
        saved[Path(path).name] = {ax.get_xlabel(): ax.get_xscale() for ax in figure.axes}
        return savefig(figure, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    return saved


def test_an_optuna_search_gets_a_scatter_panel_per_parameter_with_log_axes(tmp_path, saved_axes):
    """The search space is read from each job's .hydra/hydra.yaml; tests/e2e/test_sweeps.py runs this
    on a real Optuna sweep."""
    sweep = tmp_path / "optuna"
    params = {"optimizer.lr": "tag(log, interval(1e-4, 1e-2))", "optimizer.weight_decay": "interval(0.0, 0.2)",
              "optimizer.warmup_steps": "choice(0, 20, 50)"}
    trials = [(3e-4, 0.05, 0), (2e-3, 0.11, 20), (8e-3, 0.02, 50), (1e-3, 0.17, 20)]
    for job, (lr, decay, warmup) in enumerate(trials):
        make_run(sweep / str(job), [f"optimizer.lr={lr}", f"optimizer.weight_decay={decay}",
                                    f"optimizer.warmup_steps={warmup}"], train_metrics([10.0, 5 + lr * 100], 64), {},
                 sweeper_params=params)
    written = compare([sweep])
    assert written["metric_plot"] == sweep / "val_loss_vs_params.png"
    assert saved_axes["val_loss_vs_params.png"] == {
        "optimizer.lr": "log", "optimizer.weight_decay": "linear", "optimizer.warmup_steps": "linear"}
    assert search_spaces([sweep / "0"])["optimizer.lr"] == "tag(log, interval(1e-4, 1e-2))"


def test_malformed_run_files_are_skipped_with_a_warning_naming_them(context_sweep, run_module):
    """A torn or hand-edited summary.json, failure.json or metrics.jsonl line does not stop the
    report: each file is named in one warning, and what is readable is reported."""
    (context_sweep / "0" / "summary.json").write_text('{"steps": 2')
    (context_sweep / "2" / "failure.json").write_bytes(b"\xff\xfe")
    good = (context_sweep / "1" / "metrics.jsonl").read_bytes()
    (context_sweep / "1" / "metrics.jsonl").write_bytes(
        b'[1, 2]\n7\n{"val/loss": "low", "tokens_seen": 9}\n{"val/loss": 1.0}\n\xff\xfe\n' + good + b'{"val/lo')
    result = run_module("gpt2exp.compare", str(context_sweep))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"warning: {context_sweep / '0' / 'summary.json'}: not a JSON object: Expecting ',' delimiter: line 1 "
        "column 12 (char 11); skipping it",
        f"warning: {context_sweep / '1' / 'metrics.jsonl'}: skipping 5 malformed lines (line 1, 2, 3, 5, 9)",
        f"warning: {context_sweep / '2' / 'failure.json'}: not a JSON object: 'utf-8' codec can't decode byte 0xff "
        "in position 0: invalid start byte; skipping it",
    ]
    rows = read_csv(context_sweep / "compare.csv")
    assert [(r["run"], r["status"]) for r in rows] == [("0", "incomplete"), ("1", "ok"), ("2", "incomplete")]
    assert [float(r["val_loss"]) for r in rows[:2]] == [7.0, 6.0]


@pytest.fixture
def saved_figures(monkeypatch) -> dict:
    """{PNG file name: the Figure saved there}."""
    from matplotlib.figure import Figure

    saved, savefig = {}, Figure.savefig

    def record(figure, path, *args, **kwargs):
        saved[Path(path).name] = figure
        return savefig(figure, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    return saved


def drawn_extents(figure) -> tuple:
    """The figure's box, its axes' box, its legend's box and its x tick labels' boxes, in pixels."""
    renderer = figure.canvas.get_renderer()
    figure.canvas.draw()
    [ax] = figure.axes
    [legend] = figure.legends or [ax.get_legend()]
    ticks = [label.get_window_extent(renderer) for label in ax.get_xticklabels() if label.get_text()
             and ax.get_xlim()[0] <= label.get_position()[0] <= ax.get_xlim()[1]]
    return figure.bbox, ax.get_window_extent(renderer), legend.get_window_extent(renderer), ticks, legend


def test_runs_are_labelled_by_the_keys_that_differ_and_the_legend_fits_the_figure(tmp_path, saved_figures):
    """Three runs given one by one, as train writes them: one resumed from another by its absolute
    path. The legend names each run by what differs (a path by its folder's name), sits inside the
    figure without squeezing the axes, and no two x tick labels overlap."""
    outputs = tmp_path / "home" / "someone" / "projects" / "gpt2-experiments" / "outputs" / "2026-12-06"
    common = ["model.context_length=32", "data=text", f"data.path={tmp_path}/corpus.txt", "logger=none"]
    runs = [make_run(outputs / "10-41-07", [*common, "trainer.max_steps=20"],
                     train_metrics([10.8, 10.5, 10.2], tokens_per_step=640_000), {}),
            make_run(outputs / "10-44-51", [*common, "trainer.max_steps=20", "optimizer.lr=3e-3"],
                     train_metrics([10.8, 9.8, 9.0], tokens_per_step=640_000), {}),
            make_run(outputs / "11-02-33", [f"trainer.resume={outputs / '10-41-07'}", *common, "trainer.max_steps=40"],
                     train_metrics([10.8, 10.5, 10.2, 9.9, 9.5], tokens_per_step=640_000), {})]
    written = compare(runs, out_dir=tmp_path / "report")
    for name in (written["val_loss_plot"].name, written["metric_plot"].name):
        figure, axes, legend, ticks, artist = drawn_extents(saved_figures[name])
        assert figure.x0 <= legend.x0 and legend.x1 <= figure.x1 and figure.y0 <= legend.y0, name
        assert not axes.overlaps(legend) and axes.width > 0.75 * figure.width, name
        assert all(left.x1 < right.x0 for left, right in zip(ticks, ticks[1:])), name
    labels = [text.get_text() for text in drawn_extents(saved_figures["val_loss.png"])[4].get_texts()]
    assert labels == ["trainer.max_steps=20", "trainer.max_steps=20, optimizer.lr=3e-3",
                      "trainer.max_steps=40, trainer.resume=10-41-07"]


def test_runs_that_would_read_the_same_keep_their_names_and_long_labels_wrap(tmp_path, saved_figures):
    long = [f"model.option_{i}=a-rather-long-setting-{i}" for i in range(6)]
    runs = [make_run(tmp_path / name, overrides, train_metrics([10.0, 9.0 - i], 64), {})
            for i, (name, overrides) in enumerate([("a", ["seed=1"]), ("b", ["seed=1"]), ("c", ["seed=2", *long])])]
    compare(runs, out_dir=tmp_path / "report")
    figure, axes, legend, _, artist = drawn_extents(saved_figures["val_loss.png"])
    labels = [text.get_text() for text in artist.get_texts()]
    assert labels[:2] == ["a: seed=1", "b: seed=1"]
    assert labels[2].startswith("seed=2, model.option_0=") and labels[2].count("\n") >= 2
    assert figure.x0 <= legend.x0 and legend.x1 <= figure.x1 and figure.y0 <= legend.y0
    assert not axes.overlaps(legend)


def test_long_categorical_values_make_ticks_that_do_not_overlap(tmp_path, saved_figures):
    folder = tmp_path / "data" / "corpora" / "collected-2026"
    runs = [make_run(tmp_path / "sweep" / str(job), [f"data.path={folder}/{name}-articles-cleaned.txt"],
                     train_metrics([10.0, 8.0 + job], 64), {})
            for job, name in enumerate(["wikipedia", "gutenberg", "newspapers", "legal", "forum"])]
    written = compare(runs)
    assert written["metric_plot"].name == "val_loss_vs_data.path.png"
    _, _, _, ticks, _ = drawn_extents(saved_figures["val_loss_vs_data.path.png"])
    labels = [label.get_text() for label in saved_figures["val_loss_vs_data.path.png"].axes[0].get_xticklabels()]
    assert labels == sorted(f"{n}-articles-cleaned.txt" for n in ["wikipedia", "gutenberg", "newspapers", "legal",
                                                                   "forum"])
    assert len(ticks) == 5 and all(left.x1 < right.x0 for left, right in zip(ticks, ticks[1:]))


def test_a_users_file_of_compares_names_in_the_out_folder_is_never_replaced(context_sweep, tmp_path, capsys):
    report = tmp_path / "report"
    report.mkdir()
    (report / "compare.md").write_text("my notes\n")
    (report / "photo.png").write_text("mine")
    with pytest.raises(SystemExit) as info:
        main([str(context_sweep), "--out", str(report)])
    assert info.value.code == 2
    assert capsys.readouterr().err == f"error: --out {report}: holds compare.md, which compare did not write there; " \
                                      "name another folder\n"
    assert sorted(p.name for p in report.iterdir()) == ["compare.md", "photo.png"]
    assert (report / "compare.md").read_text() == "my notes\n"
    (report / "compare.md").unlink()
    first = compare([context_sweep], report)
    again = compare([context_sweep], report)  # its own files, replaced
    assert again["csv"].read_text() == first["csv"].read_text() and (report / "photo.png").read_text() == "mine"
