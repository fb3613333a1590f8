"""What `python -m gpt2exp.compare` reads off runs beyond their final figures: metrics of a run's
validation curve (`tokens_to:<loss>`, `loss_at:<tokens>`), and settings over seeds (runs that
differ only in `seed`): each setting's mean and standard deviation, and Welch's t-test p-value
against a reference setting."""

from __future__ import annotations

import math
import re
import statistics

CURVE_METRIC = re.compile(r"^(tokens_to|loss_at):(.*)$")
SUFFIXES = {"k": 1e3, "M": 1e6, "B": 1e9}


def curve_metric(name: str) -> tuple[str, float] | None:
    """("tokens_to", 3.5) for "tokens_to:3.5", ("loss_at", 2e6) for "loss_at:2M"; None for
    another name; ValueError for a curve metric whose value is no number."""
    match = CURVE_METRIC.match(name)
    if match is None:
        return None
    kind, text = match.groups()
    scale = SUFFIXES.get(text[-1:], 1.0)
    value = float(text[:-1] if scale != 1.0 else text)
    if not math.isfinite(value):
        raise ValueError(text)
    return kind, value * scale


def curve_value(curve: list[tuple[float, float]], name: str) -> float | None:
    """Metric `name` of a (tokens seen, val loss) curve, linear between evaluations: tokens_to:X,
    the tokens seen when the val loss first reaches X (None if it never does); loss_at:N, the val
    loss at N tokens (None outside the curve)."""
    kind, target = curve_metric(name) or ("", 0.0)
    if not curve:
        return None
    if kind == "tokens_to":
        if curve[0][1] <= target:
            return curve[0][0]
        for (t0, l0), (t1, l1) in zip(curve, curve[1:]):
            if l1 <= target:
                return t0 + (l0 - target) / (l0 - l1) * (t1 - t0)
        return None
    exact = dict(curve)
    if target in exact:
        return exact[target]
    for (t0, l0), (t1, l1) in zip(curve, curve[1:]):
        if t0 < target < t1:
            return l0 + (target - t0) / (t1 - t0) * (l1 - l0)
    return None


def settings(rows: list[dict], swept: list[str]) -> dict[str, list[dict]]:
    """The rows by setting: their values of the swept keys besides `seed` ("all" when seed is the
    only one), in first-seen order."""
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        label = ",".join(f"{k}={row['overrides'][k]}" for k in swept if k != "seed" and k in row["overrides"])
        grouped.setdefault(label or "all", []).append(row)
    return grouped


def over_seeds(rows: list[dict], swept: list[str]) -> bool:
    """Whether the runs are a sweep over seeds: `seed` swept, some setting run with two seeds or more."""
    return "seed" in swept and any(len({row["overrides"].get("seed") for row in group}) > 1
                                   for group in settings(rows, swept).values())


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Welch's t-test (unequal variances) two-sided p-value; None with fewer than two values a
    side, or no variance on either."""
    if len(a) < 2 or len(b) < 2 or statistics.variance(a) + statistics.variance(b) == 0:
        return None
    from scipy.stats import ttest_ind

    p = float(ttest_ind(a, b, equal_var=False).pvalue)
    return p if math.isfinite(p) else None


def seed_table(rows: list[dict], swept: list[str], metrics: list[str],
               reference: str | None = None) -> tuple[list[str], list[list]]:
    """One row per setting: its runs, then per metric the runs that have it (n), mean, standard
    deviation (n - 1) and Welch's p-value against `reference` (default: the first setting)."""
    grouped = settings(rows, swept)
    reference = reference or next(iter(grouped))
    base = {m: _values(grouped[reference], m) for m in metrics}
    columns = ["setting", "runs"]
    for m in metrics:
        columns += [f"{m} n", f"{m} mean", f"{m} std", f"{m} p vs {reference}"]
    cells = []
    for label, group in grouped.items():
        cells.append([label, len(group)])
        for m in metrics:
            values = _values(group, m)
            cells[-1] += [len(values), statistics.fmean(values) if values else None,
                          statistics.stdev(values) if len(values) > 1 else None,
                          None if label == reference else welch_p(values, base[m])]
    return columns, cells


def _values(rows: list[dict], metric: str) -> list[float]:
    return [float(row[metric]) for row in rows if row.get(metric) is not None]


def mean_curve(curves: list[list[tuple[float, float]]]) -> tuple[list[float], list[float], list[float]]:
    """Tokens seen, mean and standard deviation of the val loss at the evaluations every curve has."""
    common = sorted(set.intersection(*(set(t for t, _ in c) for c in curves))) if curves else []
    at = [dict(c) for c in curves]
    losses = [[a[t] for a in at] for t in common]
    return common, [statistics.fmean(v) for v in losses], [statistics.stdev(v) if len(v) > 1 else 0.0 for v in losses]
