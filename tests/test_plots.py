from PIL import Image

from gpt2exp.plots import plot_losses


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

    from gpt2exp.plots import plot_next_token_probs

    torch.manual_seed(123)
    shown = []
    path = plot_next_token_probs(
        torch.normal(0, 4, (8,)), label=lambda i: shown.append(i) or f"word{i}", temperatures=[1.0, 0.3, 1.5],
        temperature=1.0, top_k=3, top_p=None, path=tmp_path / "probs.png", show=4,
    )
    assert shown == [5, 1, 0, 3]  # the tutorial's logits, most likely first
    with Image.open(path) as image:
        assert image.format == "PNG"
