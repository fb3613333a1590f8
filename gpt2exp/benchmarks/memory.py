"""Training memory per process, computed: the bytes that the weights, gradients and AdamW's two
moments take under each `trainer.strategy`, number of processes and precision, with or without
LoRA; and README's table of them for the GPT-2 sizes (``python -m gpt2exp.benchmarks.memory``
prints it). Activations come on top: they grow with the batch and the context, and
`trainer.activation_checkpointing` cuts them."""

import sys
from pathlib import Path

import torch
import yaml

from gpt2exp.config import LoraConfig, ModelConfig
from gpt2exp.modeling.lora import block_layers
from gpt2exp.modeling.model import GPTModel

TRAINED = 16  # bytes of a parameter that trains: fp32 weight 4, gradient 4, AdamW's two moments 8
FROZEN = 4  # a LoRA base's fp32 weight: no gradient, no moments
AUTOCAST_COPY = 2  # bf16 under a replica (ddp): autocast's bf16 copy of each weight, held for backward
SIZES = ("nano", "small", "medium", "large", "xl")
WORLD_SIZES = (1, 2, 4, 8)


def bytes_per_parameter(*, strategy: str = "ddp", world_size: int = 1, precision: str = "fp32",
                        trained_share: float = 1.0) -> float:
    """Bytes per model parameter on each process. ``trained_share``: the share of the parameters
    that train (LoRA's adapters; the rest is the frozen base). `fsdp` shards all of it over
    ``world_size`` processes and, in bf16, gathers each block's weights in bf16 as it computes it
    (one block at a time, not counted here); `ddp` keeps it whole on every process."""
    state = trained_share * TRAINED + (1 - trained_share) * FROZEN
    if strategy == "fsdp":
        return state / world_size
    return state + (AUTOCAST_COPY if precision == "bf16" else 0)


def lora_parameters(cfg: ModelConfig, lora: LoraConfig) -> int:
    """The parameters LoRA adds: rank x (in + out) for each targeted Linear layer of each block."""
    layers = block_layers(GPTModel.unfilled(cfg))
    per_block = sum(lora.rank * (layers[target].in_features + layers[target].out_features) for target in lora.targets)
    return per_block * cfg.n_layers


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """What a process holds, measured: its parameters, gradients and optimizer state tensors
    (a sharded tensor: this process's shard), each storage counted once."""
    tensors = [*model.parameters(), *(p.grad for p in model.parameters() if p.grad is not None),
               *(value for state in optimizer.state.values() for value in state.values()
                 if isinstance(value, torch.Tensor))]
    local = [getattr(tensor, "_local_tensor", tensor) for tensor in tensors]
    storages = {tensor.untyped_storage().data_ptr(): tensor.untyped_storage().nbytes() for tensor in local}
    return sum(storages.values())


def markdown_table(models: dict[str, ModelConfig], lora_rank: int = 8) -> str:
    """README's table: GB per process for each model, by strategy, number of processes and LoRA
    (`lora_rank` on the default targets, under ddp)."""
    lora = LoraConfig(rank=lora_rank)
    columns: list[tuple[str, dict]] = [("ddp, fp32 (any N)", {}), ("ddp, bf16 (any N)", {"precision": "bf16"}),
               *((f"fsdp, N={n}", {"strategy": "fsdp", "world_size": n}) for n in WORLD_SIZES[1:])]
    lines = ["| model | parameters | " + " | ".join(name for name, _ in columns) + f" | LoRA rank {lora_rank}, ddp fp32 |",
             "|---" * (len(columns) + 3) + "|",
             "| bytes per parameter | | " + " | ".join(f"{bytes_per_parameter(**kw):g}" for _, kw in columns)
             + " | 4 (base) + 16 (adapters) |"]
    for name, cfg in models.items():
        params, adapters = cfg.num_parameters(), lora_parameters(cfg, lora)
        share = adapters / (params + adapters)
        cells = [bytes_per_parameter(**kw) * params for _, kw in columns]
        cells.append(bytes_per_parameter(trained_share=share) * (params + adapters))
        lines.append(f"| {name} | {params / 1e6:,.0f}M | " + " | ".join(f"{cell / 1e9:.2f} GB" for cell in cells) + " |")
    return "\n".join(lines)


def preset_models(conf: Path) -> dict[str, ModelConfig]:
    """The GPT-2 sizes of `conf/model/` (`SIZES`)."""
    return {name: ModelConfig.from_dict(yaml.safe_load((conf / "model" / f"{name}.yaml").read_text())) for name in SIZES}


if __name__ == "__main__":
    package = Path(__file__).resolve().parents[1]
    conf = next(path for path in (package / "conf", package.parent / "conf") if path.is_dir())  # wheel, checkout
    sys.stdout.write(markdown_table(preset_models(conf)) + "\n")
