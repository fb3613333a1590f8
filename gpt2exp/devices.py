"""Where and how a run computes: its device (``auto``, cpu, cuda[:N], mps) and its numeric
precision (fp32, or bf16/fp16 autocast, fp16 with a gradient scaler; TF32 matmuls on NVIDIA GPUs
from Ampere on). Each resolver names the config key it was given in its errors. (torch is
imported on use.)"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gpt2exp.errors import UserError

if TYPE_CHECKING:
    import torch

@dataclass(frozen=True)
class Precision:
    """A resolved precision (fp32, bf16 or fp16) on one kind of device."""

    name: str = "fp32"
    device_type: str = "cpu"

    @property
    def dtype(self) -> torch.dtype:
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name, torch.float32)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass's context: autocast to bf16/fp16, or nothing for fp32."""
        import torch

        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A loss scaler, active for fp16 only (a no-op pass-through otherwise)."""
        import torch

        return torch.amp.GradScaler(self.device_type, enabled=self.name == "fp16")


FP32 = Precision()  # the default: no autocast


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 matmuls run natively: CUDA with bf16, or a CPU with AVX512-BF16 or AMX."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def resolve_precision(name: str, device: torch.device, key: str = "trainer.precision") -> Precision:
    """``auto`` is bf16 where it runs natively, else fp16 on CUDA, else fp32.

    Also turns on TF32 matmuls on CUDA devices of compute capability 8 (Ampere) and newer.
    """
    import torch

    if name == "fp16" and device.type != "cuda":
        raise UserError(f"{key}=fp16 is not allowed on {device.type}: it needs CUDA (use bf16 or fp32)")
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
        torch.backends.cuda.matmul.fp32_precision = "tf32"
    if name == "auto":
        name = "bf16" if bf16_supported(device) else "fp16" if device.type == "cuda" else "fp32"
    return Precision(name, device.type)


def resolve_device(name: str, key: str = "trainer.device") -> torch.device:
    """``auto`` picks CUDA when present, else MPS, else the CPU; a named device must exist."""
    import torch

    if name != "auto":
        device = torch.device(name)
        present = {
            "cpu": True,
            "cuda": torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count(),
            "mps": torch.backends.mps.is_available(),
        }
        if not present.get(device.type, False):
            raise UserError(f"{key}={name!r} is not available on this machine; use auto or cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
