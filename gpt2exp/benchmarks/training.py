"""A training step as the benchmark times it: forward, backward, gradient clipping, optimizer step."""

from collections.abc import Callable

import torch
from torch import nn

from gpt2exp.devices import Precision


def train_step(
    loss_fn: Callable[[], torch.Tensor],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    precision: Precision,
    grad_clip: float = 1.0,
) -> Callable[[], float]:
    """A function that runs one training step of ``model`` on ``loss_fn()`` and returns the loss."""
    scaler = precision.grad_scaler()

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            loss = loss_fn()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        return loss.item()

    return step
