"""Weight layouts for a model that only generates: same values, faster one-token steps.

At batch 1 a decoding step is a matrix-vector product per Linear layer, bound by how fast the
weights stream from memory. On this project's CPU (2-core AMD EPYC, torch 2.13, fp32), one step's
matvecs over GPT-2 small's weights read them at 18 GB/s with PyTorch's default layout, 23 GB/s
transposed, and 45 GB/s once oneDNN holds them pre-arranged in its blocked layout
(``torch.ops.mkldnn``, as inductor's CPU freezing does); a plain read of memory runs at 57 GB/s.
"""

import functools

import torch
import torch.nn.functional as F
from torch import nn

from gpt2exp.model import GPTModel

# oneDNN picks a weight's blocking for this many input rows. Measured here, packing for 64 to
# 1024 rows makes one-row steps ~1.4x and eight-row steps ~1.7x faster than packing for one row.
PACKED_FOR_ROWS = 256


class PackedLinear(nn.Module):
    """An inference-only ``nn.Linear`` (no gradient) whose fp32 weight oneDNN holds pre-arranged.

    It computes in fp32 whatever its input's dtype (autocast does not reach it). ``rows``
    keeps the first output rows only (the output head's vocabulary, without its padding)."""

    def __init__(self, linear: nn.Linear, rows: int | None = None):
        super().__init__()
        weight = linear.weight.detach()[:rows].float().contiguous()
        self.out_features = weight.size(0)
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight, PACKED_FOR_ROWS)
        self.bias = None if linear.bias is None else linear.bias.detach()[:rows].float().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.float(), self.packed_weight, self.bias, "none", [], "")


def to_decoding_layout(model: GPTModel) -> GPTModel:
    """Lay ``model``'s weights out for generation, in place, and return it; for a model that
    only generates from now on (it can no longer train, nor move to another device).

    On the CPU with fp32 weights, each Linear becomes a ``PackedLinear`` (the tied output head
    a packed copy of the vocabulary rows; the embedding keeps its own). Elsewhere, or where
    oneDNN is missing, each Linear weight is stored transposed in memory, which the CPU's
    one-token matmuls also read faster than the default layout."""
    pack = model.tok_emb.weight.device.type == "cpu" and model.tok_emb.weight.dtype == torch.float32
    pack = pack and _packing_works()
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
def _packing_works() -> bool:
    """Whether this PyTorch build has oneDNN's packed Linear and it computes what F.linear does
    (the ops are internal to PyTorch, so a build may lack or change them)."""
    try:
        linear = nn.Linear(16, 8)
        x = torch.randn(3, 16)
        with torch.no_grad():
            return torch.allclose(PackedLinear(linear)(x), F.linear(x, linear.weight, linear.bias), atol=1e-5)
    except (AttributeError, RuntimeError):
        return False
