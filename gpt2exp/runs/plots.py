"""Figures saved as PNG files, drawn with matplotlib's Agg canvas (no pyplot, no global state)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot_losses(epochs_seen, tokens_seen, train_losses, val_losses, path: str | Path) -> Path:
    """Train and val loss against epochs seen (bottom axis) and tokens seen (top axis), as a PNG."""
    return _save(loss_figure(epochs_seen, tokens_seen, train_losses, val_losses), path)


def loss_figure(epochs_seen, tokens_seen, train_losses, val_losses):
    """The loss plot's figure. Epoch ticks are whole epochs when the run covers two or more,
    else a few fractions; token ticks read 1.2M-style."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    fig = Figure(figsize=(5, 3), dpi=150)
    FigureCanvasAgg(fig)
    ax_epochs = fig.subplots()
    ax_epochs.plot(epochs_seen, train_losses, label="Training loss")
    ax_epochs.plot(epochs_seen, val_losses, linestyle="-.", label="Validation loss")
    ax_epochs.set_xlabel("Epochs")
    ax_epochs.set_ylabel("Loss")
    ax_epochs.legend(loc="upper right")
    ax_epochs.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=max(epochs_seen, default=0) >= 2))

    ax_tokens = ax_epochs.twiny()
    ax_tokens.plot(tokens_seen, train_losses, alpha=0)  # invisible: only aligns the top axis
    ax_tokens.set_xlabel("Tokens seen")
    ax_tokens.xaxis.set_major_locator(MaxNLocator(nbins=5))
    ax_tokens.xaxis.set_major_formatter(FuncFormatter(lambda value, _: short_number(value)))
    return fig


def short_number(value: float) -> str:
    """1.2M-style: 950, 12k, 1.2M, 3B."""
    for suffix, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}"


def plot_next_token_probs(
    logits,
    *,
    label: Callable[[int], str],
    temperatures: Sequence[float],
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    path: str | Path,
    show: int = 10,
) -> Path:
    """The tutorial's temperature figure for 1-D next-token ``logits``: the probabilities of the
    ``show`` most likely tokens (named by ``label(token_id)``) at each of ``temperatures``, and
    beside them the distribution the given decoding settings draw from, as a PNG."""
    import torch
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from gpt2exp.modeling.decoding import next_token_probs

    logits = torch.as_tensor(logits, dtype=torch.float32).flatten()
    shown = torch.topk(logits, min(show, logits.numel())).indices
    positions = torch.arange(len(shown)).numpy()
    names = [label(int(i)) for i in shown]

    fig = Figure(figsize=(10, 3.5), dpi=150)
    FigureCanvasAgg(fig)
    ax_temps, ax_settings = fig.subplots(1, 2)
    width = 0.8 / len(temperatures)
    for j, temp in enumerate(temperatures):
        probs = torch.softmax(logits / temp, dim=-1)[shown]
        ax_temps.bar(positions + (j - (len(temperatures) - 1) / 2) * width, probs.numpy(), width,
                     label=f"Temperature = {temp:g}")
    ax_temps.set_ylabel("Probability")
    ax_temps.set_title("Temperature scaling")
    ax_temps.legend()

    probs = next_token_probs(logits[None], temperature=temperature, top_k=top_k, top_p=top_p)[0]
    ax_settings.bar(positions, probs[shown].numpy())
    ax_settings.set_title(_settings_title(temperature, top_k, top_p) + f" ({int((probs > 0).sum())} tokens kept)")
    for ax in (ax_temps, ax_settings):
        ax.set_xticks(positions)
        ax.set_xticklabels(names, rotation=90)
    return _save(fig, path)


def _settings_title(temperature: float, top_k: int | None, top_p: float | None) -> str:
    if temperature == 0:
        return "Greedy (argmax)"
    parts = [f"T={temperature:g}"] + [f"{key}={value:g}" for key, value in (("top_k", top_k), ("top_p", top_p))
                                      if value is not None]
    return "Sampling, " + ", ".join(parts)


def _save(fig: Figure, path: str | Path) -> Path:
    """Write `fig` as a PNG at `path` (its folder made), laid out tight unless the figure has
    a layout engine of its own."""
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


LEGEND_WIDTH = 70  # characters of a legend line; longer labels wrap


def plot_series(series: dict, path: str | Path, *, xlabel: str, ylabel: str, xticklabels=None,
                short_x: bool = False, spread: dict | None = None) -> Path:
    """One line per `{label: (xs, ys)}` entry on shared axes, as a PNG, the legend below the axes
    (long labels wrapped, the figure taller for it); `xticklabels` names the integer x positions
    of a categorical axis (upright when long); `short_x` writes x ticks 1.2M-style. `spread`
    ({label: a standard deviation per point}) draws mean ± std: a band around a line, error bars
    on a categorical axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    labels = ["\n".join(textwrap.wrap(label, LEGEND_WIDTH, break_on_hyphens=False)) or label for label in series]
    legend_lines = sum(label.count("\n") + 1 for label in labels)
    longest_tick = max(map(len, map(str, xticklabels or [])), default=0)
    upright = longest_tick * len(xticklabels or []) > 48  # side by side, they would touch
    fig = Figure(figsize=(6, 4 + 0.16 * legend_lines + (0.08 * longest_tick if upright else 0)), dpi=150,
                 layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for label, (key, (xs, ys)) in zip(labels, series.items()):
        line = ax.plot(xs, ys, marker="o", markersize=3, label=label)[0]
        std = (spread or {}).get(key)
        if std is not None and xticklabels is not None:
            ax.errorbar(xs, ys, yerr=std, fmt="none", ecolor=line.get_color(), capsize=4)
        elif std is not None:
            ax.fill_between(xs, [y - d for y, d in zip(ys, std)], [y + d for y, d in zip(ys, std)],
                            color=line.get_color(), alpha=0.2, linewidth=0)
    if xticklabels is not None:
        ax.set_xticks(range(len(xticklabels)), [str(x) for x in xticklabels], rotation=90 if upright else 0)
    elif short_x:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: short_number(value)))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if series:
        fig.legend(loc="outside lower center", fontsize="x-small", frameon=False)
    return _save(fig, path)


def plot_scatter_panels(panels: dict, path: str | Path, *, ylabel: str) -> Path:
    """One scatter panel per `{xlabel: (xs, ys, log_x, xticklabels)}` entry, side by side, as a
    PNG; `xticklabels` names the integer x positions of a categorical axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4 * max(1, len(panels)), 3.5), dpi=150)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(1, len(panels)), sharey=True, squeeze=False)[0]
    for ax, (xlabel, (xs, ys, log_x, ticks)) in zip(axes, panels.items()):
        ax.scatter(xs, ys, s=14)
        if log_x:
            ax.set_xscale("log")
        if ticks is not None:
            ax.set_xticks(range(len(ticks)), [str(t) for t in ticks])
        ax.set_xlabel(xlabel)
    axes[0].set_ylabel(ylabel)
    return _save(fig, path)
