"""`trainer.strategy=fsdp`: PyTorch's FSDP2 (`torch.distributed.fsdp.fully_shard`) shards the
weights, gradients and optimizer state over the processes of a torchrun job, one unit per
transformer block and one for the rest (embeddings, final norm, tied head). Each block's weights
are gathered for its forward and backward and freed after.

Checkpoints stay gpt2exp's one format (`gpt2exp.modeling.checkpoint`): the whole weights and
the optimizer state are gathered on rank 0 (on the CPU) and saved as a single process saves
them, so that a run resumes on any number of processes, under `ddp` or `fsdp`, and `export`,
`eval` and `generate` read the file as any other. (`torch.distributed.checkpoint`'s sharded
folders would save faster on many GPUs, but every reader would need its loader.) Sharding and
gathering are collectives: each rank calls them at the same point."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from gpt2exp.devices import Precision
from gpt2exp.modeling.model import GPTModel

GATHERED = StateDictOptions(full_state_dict=True, cpu_offload=True)  # whole tensors, on rank 0's CPU only


def shard(model: GPTModel, precision: Precision) -> GPTModel:
    """`model` sharded in place over the job's processes, rank 0's weights on every rank (as DDP
    broadcasts them): its blocks and then the rest, with the weights gathered in `precision`'s
    dtype and gradients reduced in fp32. The model's own activation checkpointing
    (`trainer.activation_checkpointing`) recomputes each sharded block."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor, src=0)
    policy = MixedPrecisionPolicy(param_dtype=None if precision.name == "fp32" else precision.dtype,
                                  reduce_dtype=torch.float32)
    for block in model.blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def gathered_weights(model: GPTModel) -> dict[str, torch.Tensor]:
    """The model's whole state dict on rank 0 (CPU tensors; a tied head shares the embedding's
    tensor, as a single process saves it); {} on the other ranks."""
    weights = cast(dict[str, torch.Tensor], get_model_state_dict(model, options=GATHERED))  # of a GPTModel: tensors
    if weights and model.cfg.tie_embeddings:
        weights["out_head.weight"] = weights["tok_emb.weight"]
    return weights


def gathered_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's whole state on rank 0, as `optimizer.state_dict()` gives it in a single
    process (parameters numbered in the optimizer's order, so that any strategy reads it); {} on
    the other ranks. Each sharded tensor is gathered in turn, then kept on rank 0's CPU."""
    saved, main = optimizer.state_dict(), dist.get_rank() == 0
    state = {number: {key: _gathered(value, main) for key, value in param_state.items()}
             for number, param_state in saved["state"].items()}
    return {**saved, "state": state} if main else {}


def _gathered(value: object, keep: bool) -> object:
    """A sharded tensor's whole value (every rank takes part), on the CPU where kept."""
    if not isinstance(value, DTensor):
        return value
    whole = value.full_tensor()
    return whole.cpu() if keep else None


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Load a whole optimizer state (`optimizer.state_dict()`'s layout, every rank holding it)
    into the sharded optimizer: each rank keeps its shard of each parameter's state. Parameters
    pair up by position, as `Optimizer.load_state_dict` pairs them."""
    params = [param for group in optimizer.param_groups for param in group["params"]]
    numbers = [number for group in saved["param_groups"] for number in group["params"]]
    state = {number: {key: _sharded_like(param, value) for key, value in saved["state"][number].items()}
             for param, number in zip(params, numbers, strict=True) if number in saved["state"]}
    optimizer.load_state_dict({**saved, "state": state})


def _sharded_like(param: torch.Tensor, value: object) -> object:
    """`value` sharded as `param` is, when it is a tensor of the parameter's shape (AdamW's moments;
    its step count stays whole)."""
    if isinstance(param, DTensor) and isinstance(value, torch.Tensor) and value.shape == param.shape:
        return distribute_tensor(value.to(param.device), param.device_mesh, param.placements, src_data_rank=None)
    return value


@dataclass
class Sharded:
    """A sharded model and its optimizer as rank 0's checkpoints and samples need them: whole.
    Every rank calls each method at the same point (rank 0 gets the value, the others {} or None)."""

    model: GPTModel
    optimizer: torch.optim.Optimizer

    def weights(self) -> dict[str, torch.Tensor]:
        return gathered_weights(self.model)

    def optimizer_state(self) -> dict:
        return gathered_optimizer_state(self.optimizer)

    def whole_model(self) -> GPTModel | None:
        """A plain (unsharded) copy of the model on rank 0's device, for what rank 0 does alone
        (samples, the test split)."""
        weights = self.weights()
        if not weights:
            return None
        copy = GPTModel.unfilled(self.model.cfg, next(self.model.parameters()).device)
        copy.load_state_dict(weights)
        return copy.train(self.model.training)
