"""``python -m gpt2exp.compare <sweep dir | run folders...>``: runs side by side, offline.

Reads each run folder's own files (.hydra/overrides.yaml, metrics.jsonl, summary.json,
failure.json) and writes a table (printed, compare.csv, compare.md) with one row per run,
an overlay of the training runs' validation loss against tokens seen (val_loss.png) and a chosen
metric against a swept parameter (<metric>_vs_<param>.png). A sweep over seeds (runs that differ
only in `seed`) also gets one row per setting (compare_seeds.csv, and in compare.md): mean ± std
over its seeds and Welch's t-test p-value against a reference setting, and its plots show each
setting's mean with ± std bands or error bars. A file or line it cannot read (a torn or
hand-edited one) is skipped with a warning naming it.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import re
import sys
from pathlib import Path

import yaml

from gpt2exp.cli.compare_outputs import check_free, record
from gpt2exp.cli.messages import error_message, fail
from gpt2exp.cli.seeds import CURVE_METRIC, curve_metric, curve_value, mean_curve, over_seeds, seed_table, settings
from gpt2exp.cli.table import format_table
from gpt2exp.cli.task_figures import is_task_metric, task_columns, task_figures
from gpt2exp.errors import UserError
from gpt2exp.runs.jsonl import read_jsonl
from gpt2exp.runs.layout import RunLayout
from gpt2exp.runs.plots import plot_scatter_panels, plot_series

FIGURES = {  # table column: metrics.jsonl key (the last value logged is the final one)
    "train_loss": "train/loss",
    "val_loss": "val/loss",
    "train_perplexity": "train/perplexity",
    "val_perplexity": "val/perplexity",
    "test_loss": "test/loss",
    "test_perplexity": "test/perplexity",
    "tokens_seen": "tokens_seen",
    "gen/tokens_per_sec": "gen/tokens_per_sec",
    "gen/distinct_1": "gen/distinct_1",
    "gen/distinct_2": "gen/distinct_2",
    "gen/repeat_4gram_rate": "gen/repeat_4gram_rate",
    "gen/nll": "gen/nll",
}
DEFAULT_METRICS = ("val_loss", "gen/nll", "gen/distinct_2")
NUMBERS = (*FIGURES.values(), "tokens_per_sec")  # a metrics.jsonl record whose value of one is no number is skipped
log = logging.getLogger(__name__)


def find_runs(paths: list[str | Path]) -> list[Path]:
    """The run folders (those with .hydra/config.yaml) at or under `paths`, in job order."""
    runs: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise UserError(f"{path}: no such folder")
        found = [path] if (path / RunLayout.HYDRA / "config.yaml").is_file() else sorted(
            (p.parent.parent for p in path.rglob(".hydra/config.yaml")), key=_natural_key
        )
        if not found:
            raise UserError(f"{path}: no run folders (with .hydra/config.yaml) in it")
        runs.extend(p for p in found if p not in runs)
    return runs


def read_run(folder: str | Path, name: str | None = None) -> dict:
    """One run as a table row: "run" (`name`, default the folder's name), "status" (ok, failed,
    incomplete), "error", "overrides" ({key: value}), the final figures of `FIGURES`,
    "tokens_per_sec" (mean over the training's evaluations), "sample" (the last one),
    "reused_from" and "curve" (tokens seen, val loss pairs)."""
    folder = Path(folder)
    overrides = _read_yaml(folder / RunLayout.HYDRA / "overrides.yaml")
    overrides = [o for o in overrides if isinstance(o, str)] if isinstance(overrides, list) else []
    metrics = read_jsonl(folder / RunLayout.METRICS, lambda m: all(_is_number(m[k]) for k in NUMBERS if k in m), log)
    summary = _read_json(folder / RunLayout.SUMMARY)
    failure = _read_json(folder / RunLayout.FAILURE)
    evaluation = _read_json(folder / RunLayout.EVAL)  # python -m gpt2exp.eval's
    row = {
        "run": name or folder.name,
        "status": "failed" if failure else "ok" if summary or evaluation else "incomplete",
        "error": str((failure or {}).get("error", "")),
        "overrides": dict(_split_override(o) for o in overrides),
        "reused_from": _section(summary, "reused_from").get("job", ""),
    }
    for column, key in FIGURES.items():
        values = [m[key] for m in metrics if key in m]
        row[column] = values[-1] if values else None
    samples = read_jsonl(folder / RunLayout.SAMPLES, lambda s: isinstance(s.get("text"), str), log)
    row["sample"] = samples[-1]["text"] if samples else ""
    speeds = [m["tokens_per_sec"] for m in metrics if m.get("tokens_per_sec")]
    row["tokens_per_sec"] = sum(speeds) / len(speeds) if speeds else None
    row["curve"] = [(m["tokens_seen"], m["val/loss"]) for m in metrics if "val/loss" in m and "tokens_seen" in m]
    row |= task_figures(metrics, evaluation)
    row["best_val_loss"] = min((loss for _, loss in row["curve"]), default=None)
    return row


def swept_keys(rows: list[dict]) -> list[str]:
    """Override keys whose value is not the same in every row, in first-seen order."""
    keys = list(dict.fromkeys(k for row in rows for k in row["overrides"]))
    return [k for k in keys if len({row["overrides"].get(k) for row in rows}) > 1]


def table(rows: list[dict]) -> tuple[list[str], list[list]]:
    """Columns and cells: run, status, the swept overrides, the figures any row has, the last
    sample when decoding settings are swept, the job a model was reused from, error."""
    swept = swept_keys(rows)
    curve_metrics = [c for c in (rows[0] if rows else {}) if CURVE_METRIC.match(c)]
    figures = [c for c in ("train_loss", "val_loss", "best_val_loss", *curve_metrics, "train_perplexity",
                           "val_perplexity", "test_loss", "test_perplexity", "tokens_per_sec",
                           *[c for c in FIGURES if c.startswith("gen/")]) if any(r[c] is not None for r in rows)]
    figures += task_columns(rows)
    extras = [c for c in ("reused_from", "error") if any(r[c] != "" for r in rows)]
    if any(k.startswith("decoding") for k in swept):
        extras.insert(0, "sample")
    columns = ["run", "status", *swept, *figures, *extras]
    cells = [[row["overrides"].get(c, "") if c in swept else row[c] for c in columns] for row in rows]
    return columns, cells


def write_tables(columns: list[str], cells: list[list], out_dir: Path) -> tuple[Path, Path]:
    """compare.csv (full precision) and compare.md (4 significant digits) in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / "compare.csv", out_dir / "compare.md"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([columns, *[["" if v is None else v for v in row] for row in cells]])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |" for row in cells]
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return csv_path, md_path


def plot_val_curves(rows: list[dict], path: Path) -> Path:
    """All runs' validation loss against tokens seen, one line per run; over seeds, one line per
    setting: the mean over its seeds, ± std as a band."""
    curves = [row for row in rows if row["curve"]]
    swept = swept_keys(rows)
    if over_seeds(rows, swept):
        means, spread = {}, {}
        for label, group in settings(curves, swept).items():
            tokens, mean, std = mean_curve([row["curve"] for row in group])
            means[f"{label} ({len(group)} seeds)"] = (tokens, mean)
            spread[f"{label} ({len(group)} seeds)"] = std
        return plot_series(means, path, xlabel="Tokens seen", ylabel="Validation loss (mean ± std over seeds)",
                           short_x=True, spread=spread)
    labels = run_labels(curves, swept)
    series = {label: tuple(zip(*row["curve"])) for label, row in zip(labels, curves)}
    return plot_series(series, path, xlabel="Tokens seen", ylabel="Validation loss", short_x=True)


def plot_metric_vs_param(rows: list[dict], metric: str, param: str, path: Path) -> Path:
    """`metric` against the values of override `param`, one line per setting of the other swept
    keys (a grid sweep)."""
    seeds = over_seeds(rows, swept_keys(rows))
    others = [k for k in swept_keys(rows) if k != param and not (seeds and k == "seed")]
    names = _short_names(rows)
    points = [(row["overrides"][param], row[metric], _label(row, others, names) if others else "") for row in rows
              if param in row["overrides"] and row[metric] is not None]
    if seeds:
        return _plot_seed_means(points, metric, param, path)
    numeric = all(_number(x) is not None for x, _, _ in points)
    ticks = [] if numeric else sorted({x for x, _, _ in points})
    position = float if numeric else ticks.index  # a tick's position: its value, or its place among the ticks
    series: dict = {}
    for x, y, label in sorted(points, key=lambda p: position(p[0])):
        xs, ys = series.setdefault(label or metric, ([], []))
        xs.append(position(x))
        ys.append(y)
    return plot_series(series, path, xlabel=param, ylabel=metric,
                       xticklabels=None if numeric else [_short_value(t) for t in ticks])


def _plot_seed_means(points: list[tuple], metric: str, param: str, path: Path) -> Path:
    """`metric`'s mean over the seeds of each (label, value of `param`), ± std as error bars."""
    numeric = all(_number(x) is not None for x, _, _ in points)
    ticks = [] if numeric else list(dict.fromkeys(x for x, _, _ in points))
    position = float if numeric else ticks.index
    values: dict = {}
    for x, y, label in points:
        values.setdefault(label or metric, {}).setdefault(x, []).append(float(y))
    series, spread = {}, {}
    for label, at in values.items():
        xs = sorted(at, key=position)
        series[label] = ([position(x) for x in xs], [sum(at[x]) / len(at[x]) for x in xs])
        spread[label] = [_std(at[x]) for x in xs]
    return plot_series(series, path, xlabel=param, ylabel=f"{metric} (mean ± std over seeds)", spread=spread,
                       xticklabels=None if numeric else [_short_value(t) for t in ticks])


def _std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0


def plot_search(rows: list[dict], metric: str, params: list[str], log_params: set[str], path: Path) -> Path:
    """A random or Optuna search: `metric` against each tuned parameter, one scatter panel each,
    on a log axis for the parameters searched on a log scale."""
    panels = {}
    for param in params:
        points = [(row["overrides"][param], row[metric]) for row in rows
                  if param in row["overrides"] and row[metric] is not None]
        numeric = all(_number(x) is not None for x, _ in points)
        ticks = None if numeric else sorted({x for x, _ in points})
        xs = [float(x) for x, _ in points] if ticks is None else [ticks.index(x) for x, _ in points]
        panels[param] = (xs, [y for _, y in points], param in log_params and numeric, ticks)
    return plot_scatter_panels(panels, path, ylabel=metric)


def is_search(rows: list[dict], keys: list[str], spaces: dict[str, str]) -> bool:
    """Whether the runs sample their settings of `keys` (random or Optuna search) rather than lay
    out a grid: a key searched over an interval (`spaces`, from the jobs' .hydra/hydra.yaml), or
    some setting of the other keys occurring once while one key took several values."""
    if any("interval(" in spaces.get(key, "") for key in keys):
        return True
    for key in keys:
        labels = [_label(row, [k for k in keys if k != key]) for row in rows if key in row["overrides"]]
        if len(keys) > 1 and len(labels) > 1 and any(labels.count(label) == 1 for label in labels):
            return True
    return False


def search_spaces(runs: list[Path]) -> dict[str, str]:
    """The sweeper's `params` ({key: search space}, e.g. "tag(log, interval(1e-4, 1e-2))") that
    each run's .hydra/hydra.yaml holds (every sweeper's jobs have one; only Hydra's basic sweeper
    also writes a multirun.yaml)."""
    spaces: dict[str, str] = {}
    for run in runs:
        config = _read_yaml(run / RunLayout.HYDRA / "hydra.yaml")
        params = _section(_section(_section(config, "hydra"), "sweeper"), "params")
        spaces |= {str(key): space for key, space in params.items() if isinstance(space, str)}
    return spaces


def compare(paths: list[str | Path], out_dir: str | Path | None = None, metric: str | None = None,
            param: str | None = None, reference: str | None = None) -> dict:
    """Table and plots for the runs at `paths`, written to `out_dir` (default: the one folder
    given, or the folders' common parent). Returns {"text", "rows", and the written paths}.

    The metric plotted is `metric`, else the first of `DEFAULT_METRICS` that differs between
    the runs; the x axis is `param`, else the first swept override that takes two or more
    values among the runs with the metric. A random or Optuna search gets one scatter panel
    per tuned parameter instead (`<metric>_vs_params.png`). `metric` may also be read off each
    run's val loss curve: tokens_to:<loss> or loss_at:<tokens> (see `seeds.curve_value`). Over
    seeds, the p-values are against setting `reference` (default: the first)."""
    metrics = [*([metric] if metric and is_task_metric(metric) else []), *FIGURES, "best_val_loss", "tokens_per_sec"]
    if metric is not None and metric not in metrics and _curve_metric(metric) is None:
        raise UserError(f"--metric {metric}: not one of {', '.join(metrics)}, tokens_to:<val loss>, "
                        "loss_at:<tokens>")
    runs = find_runs(paths)
    base = Path(paths[0]) if len(paths) == 1 else _common_parent(runs)
    rows = [read_run(folder, folder.name if folder == base else str(folder.resolve().relative_to(base.resolve())))
            for folder in runs]
    task_columns(rows)  # every row gets every task metric
    if metric is not None and metric not in metrics:
        metrics.append(metric)
        for row in rows:
            row[metric] = curve_value(row["curve"], metric)
    present = [m for m in metrics if any(r[m] is not None for r in rows)]
    if metric is not None and metric not in present and CURVE_METRIC.match(metric):
        raise UserError(f"--metric {metric}: no run's val loss curve gives it (tokens_to: never reached; loss_at: "
                        "past every curve's end)")
    if metric is not None and metric not in present:
        raise UserError(f"--metric {metric}: no run logged it; they have {', '.join(present) or 'no metrics'}")
    if out_dir is not None:  # a folder of the user's (the default is the runs' own folder)
        check_free(Path(out_dir))
    out_dir = Path(out_dir) if out_dir else base
    columns, cells = table(rows)
    csv_path, md_path = write_tables(columns, cells, out_dir)
    written = {"text": format_table(columns, [[_fmt(v) for v in row] for row in cells]), "rows": rows, "csv": csv_path, "markdown": md_path}
    if over_seeds(rows, swept_keys(rows)):
        written |= write_seed_table(rows, [m for m in dict.fromkeys([metric or "val_loss", "val_loss", "best_val_loss"])
                                           if m in present], reference, out_dir, md_path)
    if any(row["curve"] for row in rows):
        written["val_loss_plot"] = plot_val_curves(rows, out_dir / "val_loss.png")
    present_defaults = [m for m in DEFAULT_METRICS if m in present]
    metric = metric or next((m for m in present_defaults if _varies(rows, m)), next(iter(present_defaults), None))
    if metric is None:
        return record(out_dir, written)
    swept = swept_keys(rows)
    measured = [r for r in rows if r[metric] is not None]
    varying = [k for k in swept if len({r["overrides"][k] for r in measured if k in r["overrides"]}) > 1]
    if over_seeds(rows, swept):  # the seeds are each setting's samples, not a parameter
        varying = [k for k in varying if k != "seed"]
    if param is not None and param not in swept:
        raise UserError(f"--param {param}: not a swept override; swept: {', '.join(swept) or 'none'}")
    spaces = search_spaces(runs)
    if param is None and varying and is_search(measured, varying, spaces):
        log_keys = {key for key, space in spaces.items() if re.search(r"\blog\b", space)}
        written["metric_plot"] = plot_search(measured, metric, varying, log_keys,
                                             out_dir / f"{_file_name(metric)}_vs_params.png")
        return record(out_dir, written)
    param = param or next(iter(varying), None)
    if param is not None:
        written["metric_plot"] = plot_metric_vs_param(rows, metric, param, out_dir / f"{_file_name(metric)}_vs_"
                                                      f"{_file_name(param)}.png")
    return record(out_dir, written)


def write_seed_table(rows: list[dict], metrics: list[str], reference: str | None, out_dir: Path,
                     md_path: Path) -> dict:
    """compare_seeds.csv (full precision) and a section of compare.md: each setting's mean ± std
    and p-value of `metrics` over its seeds; returns {"seeds_csv", "seeds_text"}."""
    swept = swept_keys(rows)
    if reference is not None and reference not in settings(rows, swept):
        raise UserError(f"--reference {reference}: not a setting; the settings: {', '.join(settings(rows, swept))}")
    columns, cells = seed_table(rows, swept, metrics, reference)
    csv_path = out_dir / "compare_seeds.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([columns, *[["" if v is None else v for v in row] for row in cells]])
    shown = ["setting", "runs", *[c for m in metrics for c in (f"{m} (mean ± std)", f"{m} n")],
             *[c for c in columns if " p vs " in c]]
    shown_cells = []
    for row in cells:
        values = dict(zip(columns, row))
        shown_cells.append([values["setting"], values["runs"],
                            *[v for m in metrics for v in (_mean_std(values[f"{m} mean"], values[f"{m} std"]),
                                                           values[f"{m} n"])],
                            *[_fmt_p(values[c]) for c in columns if " p vs " in c]])
    lines = ["", "Over seeds (p: Welch's t-test)", "", "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |" for row in shown_cells]
    with md_path.open("a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return {"seeds_csv": csv_path, "seeds_text": format_table(shown, [[_fmt(v) for v in row] for row in shown_cells])}


def _mean_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return ""
    return f"{mean:.4g} ± {std:.2g}" if std is not None else f"{mean:.4g}"


def _fmt_p(p: float | None) -> str:
    return "" if p is None else f"{p:.2g}"


def _curve_metric(metric: str) -> tuple[str, float] | None:
    try:
        return curve_metric(metric)
    except ValueError:
        raise UserError(f"--metric {metric}: the value after ':' must be a number (e.g. tokens_to:3.5, "
                        "loss_at:2M)") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gpt2exp.compare", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="a sweep folder (outputs/multirun/<date>/<time>) or run folders")
    parser.add_argument("--out", help="where to write the table and plots (default: the folder given)")
    parser.add_argument("--metric", help="the metric to plot against --param (default: the first of "
                        + ", ".join(DEFAULT_METRICS) + " that differs between the runs); also best_val_loss, "
                        "tokens_to:<val loss> (tokens seen when the val loss first reaches it) and "
                        "loss_at:<tokens> (the val loss at that many tokens, e.g. loss_at:2M)")
    parser.add_argument("--param", help="the swept override on the x axis (default: the first one that takes "
                        "two or more values among the runs with the metric)")
    parser.add_argument("--reference", help="over seeds: the setting the p-values are against, as the table "
                        "names it (default: the first)")
    args = parser.parse_args(argv)
    logging.basicConfig(format="warning: %(message)s", level=logging.WARNING, stream=sys.stderr)
    try:
        written = compare(args.paths, args.out, args.metric, args.param, args.reference)
    except UserError as err:
        fail(error_message(err))
    print(written["text"])
    if "seeds_text" in written:
        print("\nOver seeds (p: Welch's t-test)\n" + written["seeds_text"])
    files = [written[k] for k in ("csv", "seeds_csv", "markdown", "val_loss_plot", "metric_plot") if k in written]
    print("wrote " + ", ".join(str(p) for p in files))


def _varies(rows: list[dict], metric: str) -> bool:
    return len({round(r[metric], 9) for r in rows if r[metric] is not None}) > 1


def _file_name(text: str) -> str:
    return re.sub(r"[^\w.=-]+", "_", text)


def run_labels(rows: list[dict], keys: list[str]) -> list[str]:
    """Each row's legend label: its settings of `keys` (those that differ between the runs), a
    path shown by its last part; the run's name (its folder's, when no other run has that) when it
    has none of them, or before them when two runs would read the same."""
    names = _short_names(rows)
    labels = [_label(row, keys, names) for row in rows]
    return [f"{names[row['run']]}: {label}" if labels.count(label) > 1 and label != names[row["run"]] else label
            for row, label in zip(rows, labels)]


def _short_names(rows: list[dict]) -> dict[str, str]:
    """{run: its folder's name where no other run has that name, else the run's whole name}."""
    folders = [Path(row["run"]).name for row in rows]
    return {row["run"]: folder if folders.count(folder) == 1 else row["run"] for row, folder in zip(rows, folders)}


def _label(row: dict, keys: list[str], names: dict[str, str] | None = None) -> str:
    settings = ", ".join(f"{k}={_short_value(row['overrides'][k])}" for k in keys if k in row["overrides"])
    return settings or (names or {}).get(row["run"], row["run"])


def _short_value(value) -> str:
    """An override's value for a legend or tick: a path (trainer.resume=/home/.../10-41-07) by its
    last part, anything else as the table shows it."""
    text = _fmt(value)
    if "/" in text.rstrip("/") and not text.startswith(("[", "{", "'", '"')):
        return Path(text.rstrip("/")).name or text
    return text


def _split_override(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) or (isinstance(value, str) and len(value) > 8 and _number(value) is not None):
        return f"{float(value):.4g}"
    return str(value).replace("\n", " ")


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def _read_json(path: Path) -> dict | None:
    """A JSON object file (summary.json, failure.json); None when it is absent or, with a
    warning, not a JSON object."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        value = err
    if not isinstance(value, dict):
        problem = f": {value}" if isinstance(value, Exception) else ""
        log.warning("%s: not a JSON object%s; skipping it", path, problem)
        return None
    return value


def _read_yaml(path: Path):
    """A YAML file's value; {} when it is absent or, with a warning, not readable YAML."""
    try:
        return yaml.safe_load(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, yaml.YAMLError) as err:
        log.warning("%s: not readable YAML (%s); skipping it", path, " ".join(str(err).split()))
        return {}


def _section(config, key: str) -> dict:
    value = config.get(key) if isinstance(config, dict) else None
    return value if isinstance(value, dict) else {}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _common_parent(folders: list[Path]) -> Path:
    return Path(os.path.commonpath([str(f.resolve()) for f in folders]))


if __name__ == "__main__":
    main()
