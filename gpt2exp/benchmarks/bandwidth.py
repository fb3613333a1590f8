"""Memory read bandwidth, measured on the spot, and the share of it that decoding uses (MBU)."""

import torch

from gpt2exp.benchmarks.timing import time_interleaved
from gpt2exp.modeling.model import GPTModel

# A read this large outgrows every CPU's last-level cache (and a GPU's L2) many times over.
READ_BYTES = {"cpu": 2**30, "cuda": 4 * 2**30}


def read_bandwidth(device: torch.device, *, size_bytes: int | None = None, repeats: int = 7) -> float:
    """Bytes/s at which ``device`` reads memory: an fp32 tensor of ``size_bytes`` summed (the
    median of ``repeats`` after a warm-up), the way a batch-1 decoding step streams its weights."""
    size_bytes = size_bytes or READ_BYTES.get(device.type, 2**30)
    tensor = torch.ones(size_bytes // 4, device=device)
    seconds = time_interleaved({"sum": tensor.sum}, repeats=repeats, warmup=1, device=device)["sum"]
    return size_bytes / seconds


def decode_bytes_per_token(model: GPTModel, *, context_tokens: float, weight_bytes: int = 4, kv_bytes: int = 4) -> float:
    """Bytes one KV-cached decoding step (batch 1) reads: every Linear weight once (the output
    head's vocabulary rows; ``weight_bytes`` each, 2 for bf16), its biases, and the keys and
    values of ``context_tokens`` earlier positions in every layer."""
    cfg = model.cfg
    linears = [module for module in model.blocks.modules() if isinstance(module, torch.nn.Linear)]
    weights = sum(linear.weight.numel() for linear in linears) + cfg.vocab_size * cfg.emb_dim
    biases = sum(linear.bias.numel() for linear in linears if linear.bias is not None)
    kv_cache = 2 * cfg.n_layers * cfg.emb_dim * context_tokens * kv_bytes
    return weights * weight_bytes + biases * 4 + kv_cache


def decode_mbu(model: GPTModel, tokens_per_s: float, bandwidth: float, *, prompt_tokens: int, new_tokens: int,
               weight_bytes: int = 4) -> float:
    """Model bandwidth utilisation of greedy decoding at ``tokens_per_s``: the bytes read per
    token (the KV cache at its mean length over the run) times tokens/s over ``bandwidth``."""
    mean_context = prompt_tokens + (new_tokens - 1) / 2
    per_token = decode_bytes_per_token(model, context_tokens=mean_context, weight_bytes=weight_bytes)
    return per_token * tokens_per_s / bandwidth
