"""What MFU (model FLOPs utilisation) is measured in: a GPT model's training FLOPs per token, and
the rated peak FLOP/s of known GPUs. The training log and the benchmark share them."""

import torch

from gpt2exp.modeling.model import GPTModel

# Rated dense peaks in FLOP/s by precision; fp32 on these GPUs means TF32 matmuls (enabled by
# gpt2exp.devices). The first name that occurs in the device's name wins.
RATED_PEAKS = {
    "H100 PCIe": {"bf16": 756e12, "fp16": 756e12, "fp32": 378e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp32": 495e12},
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp32": 495e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 156e12},
}


def rated_peak(device: torch.device, precision: str) -> float | None:
    """The GPU's rated dense FLOP/s at ``precision`` (fp32, bf16, fp16), when it is known."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peaks[precision] for key, peaks in RATED_PEAKS.items() if key in name), None)


def train_flops_per_token(model: GPTModel, context_length: int) -> float:
    """6 N + 12 L E T: N the parameters that take part in matmuls (the blocks and the output
    head without its vocabulary padding; not the embeddings, which are looked up, unless one
    is tied to the head), L layers, E the embedding width, T the context length (PaLM's
    estimate, appendix B)."""
    cfg = model.cfg
    positions = 0 if model.pos_emb is None else model.pos_emb.weight.numel()  # none with rotary embeddings
    lookups = positions + (0 if cfg.tie_embeddings else model.tok_emb.weight.numel())
    n = model.num_parameters() - lookups - (cfg.padded_vocab_size - cfg.vocab_size) * cfg.emb_dim
    return 6 * n + 12 * cfg.n_layers * cfg.emb_dim * context_length
