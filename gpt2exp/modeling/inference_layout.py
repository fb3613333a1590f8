"""Weight layouts for a model that only infers (generates or scores): same values, faster.

At batch 1 a decoding step is a matrix-vector product per Linear layer, bound by how fast the
weights stream from memory. On a CPU, oneDNN streams weights that it holds pre-arranged in its
blocked layout (``torch.ops.mkldnn``, as inductor's CPU freezing does) faster than PyTorch's
matvec reads them in its default or a transposed layout; scoring full windows gains too. The
README's inference-layout figures and ``python -m gpt2exp.bench bench.sections=[generate]``
measure it.
"""

import functools

import torch
import torch.nn.functional as F
from torch import nn

from gpt2exp.devices import FP32, Precision
from gpt2exp.modeling.model import GPTModel

# oneDNN picks a weight's blocking for this many input rows: packing for many rows (64 to 1024)
# also makes one-row and few-row steps faster than packing for one row.
PACKED_FOR_ROWS = 256


class PackedLinear(nn.Module):
    """An fp32, inference-only ``nn.Linear`` (no gradient) whose weight oneDNN holds pre-arranged.
    ``rows`` keeps the first output rows only (the output head's vocabulary, without padding)."""

    def __init__(self, linear: nn.Linear, rows: int | None = None):
        super().__init__()
        weight = linear.weight.detach()[:rows].contiguous()
        self.out_features = weight.size(0)
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight, PACKED_FOR_ROWS)
        self.bias = None if linear.bias is None else linear.bias.detach()[:rows].clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")


def to_inference_layout(model: GPTModel, precision: Precision = FP32) -> GPTModel:
    """Lay ``model``'s weights out for inference in ``precision``, in place, and return it; for a
    model that only infers from now on (it can no longer train, nor move to another device).

    On the CPU, for fp32 inference of fp32 weights, each Linear becomes a ``PackedLinear`` (the
    tied output head a packed copy of the vocabulary rows; the embedding keeps its own);
    otherwise (under autocast, or a PyTorch build without oneDNN) each Linear weight is stored
    transposed in memory, which one-token matmuls read faster too. Other devices keep the model
    as it is."""
    weight = model.tok_emb.weight
    if weight.device.type != "cpu":
        return model
    pack = precision.name == "fp32" and weight.dtype == torch.float32 and packing_works()
    with torch.no_grad():
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if not isinstance(child, nn.Linear):
                    continue
                if pack:
                    rows = model.cfg.vocab_size if child is model.out_head else None
                    setattr(parent, name, PackedLinear(child, rows))
                else:
                    child.weight.data = child.weight.data.t().contiguous().t()
    return model


@functools.cache
def packing_works() -> bool:
    """Whether this PyTorch build has oneDNN's packed Linear and it computes what F.linear does
    (the ops are internal to PyTorch, so a build may lack or change them)."""
    try:
        linear = nn.Linear(16, 8)
        x = torch.randn(3, 16)
        with torch.no_grad():
            return torch.allclose(PackedLinear(linear)(x), F.linear(x, linear.weight, linear.bias), atol=1e-5)
    except (AttributeError, RuntimeError):
        return False
