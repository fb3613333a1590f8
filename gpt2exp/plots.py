"""Figures saved as PNG files, drawn with matplotlib's Agg canvas (no pyplot, no global state)."""

from __future__ import annotations

from pathlib import Path


def plot_losses(epochs_seen, tokens_seen, train_losses, val_losses, path: str | Path) -> Path:
    """Train and val loss against epochs seen (bottom axis) and tokens seen (top axis), as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(5, 3), dpi=150)
    FigureCanvasAgg(fig)
    ax_epochs = fig.subplots()
    ax_epochs.plot(epochs_seen, train_losses, label="Training loss")
    ax_epochs.plot(epochs_seen, val_losses, linestyle="-.", label="Validation loss")
    ax_epochs.set_xlabel("Epochs")
    ax_epochs.set_ylabel("Loss")
    ax_epochs.legend(loc="upper right")
    ax_epochs.xaxis.set_major_locator(MaxNLocator(integer=True))

    ax_tokens = ax_epochs.twiny()
    ax_tokens.plot(tokens_seen, train_losses, alpha=0)  # invisible: only aligns the top axis
    ax_tokens.set_xlabel("Tokens seen")

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def plot_series(series: dict, path: str | Path, *, xlabel: str, ylabel: str, xticklabels=None) -> Path:
    """One line per `{label: (xs, ys)}` entry on shared axes, as a PNG; `xticklabels` names the
    integer x positions of a categorical axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", markersize=3, label=label)
    if xticklabels is not None:
        ax.set_xticks(range(len(xticklabels)), [str(x) for x in xticklabels])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if series:
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
