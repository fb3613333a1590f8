"""A matmul's FLOP/s measured on the spot: the peak the bench measures MFU against where no rated
one is known (`gpt2exp.modeling.flops` holds the rated peaks and the model's FLOPs per token)."""

import torch

from gpt2exp.benchmarks.timing import time_interleaved
from gpt2exp.modeling.inference_layout import PackedLinear, packing_works


def matmul_flops(device: torch.device, dtype: torch.dtype, *, size: int | None = None, repeats: int = 5) -> float:
    """FLOP/s of a square ``size`` x ``size`` matmul (the median of ``repeats`` after a warm-up).

    In fp32 on the CPU, the faster of PyTorch's matmul and oneDNN's with a packed weight: on AMD
    CPUs PyTorch's (MKL) runs AVX2 code, measured at less than half the FLOP/s oneDNN reaches."""
    size = size or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    runs = {"matmul": lambda: a @ b}
    if device.type == "cpu" and dtype == torch.float32 and packing_works():
        linear = torch.nn.Linear(size, size, bias=False)
        linear.weight.data = b.t()
        packed = PackedLinear(linear)  # a @ b, as generation and evaluation compute it
        runs["onednn"] = lambda: packed(a)
    seconds = time_interleaved(runs, repeats=repeats, warmup=1, device=device)
    return 2 * size**3 / min(seconds.values())
