"""The inference layout measured (``gpt2exp/modeling/inference_layout.py``): one decoding step's
and one scoring step's Linear layers in each candidate layout, and tokens/s scoring full windows
with and without the chosen layout."""

import copy

import torch

from gpt2exp.benchmarks.bandwidth import decode_bytes_per_token
from gpt2exp.benchmarks.timing import time_interleaved
from gpt2exp.config import EvalSettings, InferenceConfig
from gpt2exp.devices import Precision
from gpt2exp.evaluation.sliding_windows import score_text
from gpt2exp.modeling.inference_layout import USES, packing_works, time_layouts, to_inference_layout
from gpt2exp.modeling.model import GPTModel


def layout_times(model: GPTModel) -> dict[str, dict[str, float]]:
    """Seconds of one step's Linear layers per use (``decode``, ``score``; ``decode bf16`` too
    where this CPU packs bf16 weights) and candidate layout, as ``inference.layout=auto`` times
    them (`time_layouts`); measured afresh, the cache neither read nor written."""
    times = {use: time_layouts(model, use) for use in USES}
    if packing_works(torch.bfloat16):
        times["decode bf16"] = time_layouts(model, "decode", "bf16")
    return times


def weight_read_gb_per_s(model: GPTModel, seconds: float, *, weight_bytes: int = 4) -> float:
    """GB/s at which a decoding step of ``seconds`` reads every Linear weight (without its KV cache)."""
    return decode_bytes_per_token(model, context_tokens=0, weight_bytes=weight_bytes) / seconds / 1e9


def scoring_speed(model: GPTModel, precision: Precision, settings: InferenceConfig | None = None, *,
                  repeats: int = 3, warmup: int = 1) -> dict[str, float]:
    """Tokens/s scoring one batch of full windows (``eval.batch_size`` windows of the context, as
    ``python -m gpt2exp.eval`` scores them) in PyTorch's layout and in the inference layout
    for scoring, in ``precision``; on a CPU only (elsewhere the inference layout is the model as it is)."""
    context, batch_size = model.cfg.context_length, EvalSettings().batch_size
    generator = torch.Generator().manual_seed(0)
    token_ids = torch.randint(0, model.cfg.vocab_size, (batch_size * context + 1,), generator=generator)
    models = {"PyTorch layout": copy.deepcopy(model).eval(),
              "inference layout": to_inference_layout(copy.deepcopy(model).eval(), precision, use="score",
                                                      settings=settings)}
    steps = {name: lambda scored=scored: score_text(scored, token_ids, stride=context, batch_size=batch_size,
                                                    precision=precision)
             for name, scored in models.items()}
    with torch.no_grad():
        seconds = time_interleaved(steps, repeats=repeats, warmup=warmup, device=model.tok_emb.weight.device)
    return {name: batch_size * context / value for name, value in seconds.items()}
