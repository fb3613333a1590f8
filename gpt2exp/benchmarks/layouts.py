"""The inference layout measured (``gpt2exp/modeling/inference_layout.py``): how fast one decoding step's
matrix-vector products read a model's Linear weights in each layout, and how fast full windows
are scored with and without the layout."""

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from gpt2exp.benchmarks.timing import time_interleaved
from gpt2exp.config import EvalSettings
from gpt2exp.devices import Precision
from gpt2exp.evaluation.sliding_windows import score_text
from gpt2exp.modeling.inference_layout import PackedLinear, packing_works, to_inference_layout
from gpt2exp.modeling.model import GPTModel

MatVec = Callable[[torch.Tensor], torch.Tensor]


def _pytorch_layout(linear: nn.Linear, rows: int | None) -> MatVec:
    weight, bias = linear.weight.detach()[:rows], None if linear.bias is None else linear.bias.detach()[:rows]
    return lambda x: F.linear(x, weight, bias)


def _transposed(linear: nn.Linear, rows: int | None) -> MatVec:
    weight = linear.weight.detach()[:rows].t().contiguous().t()
    bias = None if linear.bias is None else linear.bias.detach()[:rows]
    return lambda x: F.linear(x, weight, bias)


def decode_step_bandwidth(model: GPTModel, *, repeats: int = 20, warmup: int = 2) -> dict[str, float]:
    """GB/s at which one decoding step (one token, batch 1) reads the fp32 weights of every Linear
    layer (the output head's vocabulary rows included), by layout: PyTorch's own, and on the CPU
    transposed and oneDNN's packed one (where this build has it); then a plain read of the same
    weights (their sum) for the memory's own pace. Each figure is bytes read over the median time."""
    device = model.tok_emb.weight.device
    head = model.out_head
    layers = [(module, model.cfg.vocab_size if module is head else None) for module in model.modules()
              if isinstance(module, nn.Linear)]
    layouts: dict[str, Callable[[nn.Linear, int | None], MatVec]] = {"PyTorch layout": _pytorch_layout}
    if device.type == "cpu":
        layouts["transposed"] = _transposed
        if packing_works():
            layouts["oneDNN packed"] = PackedLinear
    inputs = [torch.randn(1, linear.in_features, device=device) for linear, _ in layers]
    weights = [tensor.detach()[:rows] for linear, rows in layers
               for tensor in (linear.weight, linear.bias) if tensor is not None]
    steps: dict[str, Callable[[], object]] = {
        name: _each([layout(linear, rows) for linear, rows in layers], inputs) for name, layout in layouts.items()}
    steps["plain sum"] = lambda: [weight.sum() for weight in weights]
    with torch.inference_mode():
        seconds = time_interleaved(steps, repeats=repeats, warmup=warmup, device=device)
    total_bytes = sum(weight.numel() * weight.element_size() for weight in weights)
    return {name: total_bytes / value / 1e9 for name, value in seconds.items()}


def _each(matvecs: list[MatVec], inputs: list[torch.Tensor]) -> Callable[[], object]:
    """One decoding step's matvecs, each on its input."""
    return lambda: [matvec(x) for matvec, x in zip(matvecs, inputs)]


def scoring_speed(model: GPTModel, precision: Precision, *, repeats: int = 3, warmup: int = 1) -> dict[str, float]:
    """Tokens/s scoring one batch of full windows (``eval.batch_size`` windows of the context, as
    ``python -m gpt2exp.eval`` scores them) in PyTorch's layout and in the inference layout,
    in ``precision``; on a CPU only (elsewhere the inference layout is the model as it is)."""
    context, batch_size = model.cfg.context_length, EvalSettings().batch_size
    generator = torch.Generator().manual_seed(0)
    token_ids = torch.randint(0, model.cfg.vocab_size, (batch_size * context + 1,), generator=generator)
    models = {"PyTorch layout": copy.deepcopy(model).eval(),
              "inference layout": to_inference_layout(copy.deepcopy(model).eval(), precision)}
    steps = {name: lambda scored=scored: score_text(scored, token_ids, stride=context, batch_size=batch_size,
                                                    precision=precision)
             for name, scored in models.items()}
    with torch.no_grad():
        seconds = time_interleaved(steps, repeats=repeats, warmup=warmup, device=model.tok_emb.weight.device)
    return {name: batch_size * context / value for name, value in seconds.items()}
