from PIL import Image

from gpt2exp.runs.plots import loss_figure, plot_losses


def test_plot_losses_writes_a_readable_png(tmp_path):
    epochs_seen = [0.0, 0.5, 1.0, 1.5, 2.0]
    tokens_seen = [0, 2560, 5120, 7680, 10240]
    train_losses = [9.8, 7.1, 5.9, 5.0, 4.4]
    val_losses = [9.9, 7.6, 6.5, 6.2, 6.1]
    path = plot_losses(epochs_seen, tokens_seen, train_losses, val_losses, tmp_path / "plots" / "loss.png")
    assert path == tmp_path / "plots" / "loss.png"
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (750, 450)


def test_temperature_plot_shows_the_most_likely_tokens(tmp_path):
    import torch

    from gpt2exp.runs.plots import plot_next_token_probs

    torch.manual_seed(123)
    shown = []
    path = plot_next_token_probs(
        torch.normal(0, 4, (8,)), label=lambda i: shown.append(i) or f"word{i}", temperatures=[1.0, 0.3, 1.5],
        temperature=1.0, top_k=3, top_p=None, path=tmp_path / "probs.png", show=4,
    )
    assert shown == [5, 1, 0, 3]  # the tutorial's logits, most likely first
    with Image.open(path) as image:
        assert image.format == "PNG"


def tick_labels(axis) -> list[str]:
    """The labels of the ticks inside the axis's view."""
    axis.figure.canvas.draw()
    low, high = sorted(axis.get_view_interval())
    return [tick.label1.get_text() for tick in axis.get_major_ticks() if low <= tick.get_loc() <= high]


def test_loss_plot_ticks_read_well_for_a_sliver_of_an_epoch_and_for_many():
    sliver = loss_figure([0, 0.01, 0.02], [0, 600_000, 1_200_000], [10, 9, 8], [10, 9.5, 9])
    epochs_axis, tokens_axis = sliver.axes[0].xaxis, sliver.axes[1].xaxis
    epochs = [float(t.replace("\N{MINUS SIGN}", "-")) for t in tick_labels(epochs_axis)]
    assert len(epochs) >= 3 and all(0 <= e <= 0.025 for e in epochs)  # fractions, not 0 and 1 crammed together
    assert tick_labels(tokens_axis)[-1] in ("1.2M", "1M") and all(t[-1] in "kM0" for t in tick_labels(tokens_axis))
    many = loss_figure([0, 5, 10], [0, 50_000_000, 100_000_000], [10, 5, 3], [10, 6, 5])
    assert all(float(t).is_integer() for t in tick_labels(many.axes[0].xaxis))
    assert tick_labels(many.axes[1].xaxis)[-1] == "100M"
