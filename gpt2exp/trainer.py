"""The training loop: the tutorial's loop (zero_grad, backward, step; evaluate every
``eval_freq`` steps over ``eval_iter`` batches; a sample now and then) with gradient
accumulation, clipping and a warmup + cosine learning-rate schedule."""

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

Batch = tuple[torch.Tensor, torch.Tensor]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else MPS, else the CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def make_optimizer(
    model: nn.Module, *, lr: float, weight_decay: float, betas: Sequence[float], eps: float
) -> torch.optim.AdamW:
    """AdamW that decays the weight matrices only, not biases, norms or embeddings' ... biases."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)


def lr_multiplier(step: int, *, total_steps: int, warmup_steps: int, schedule: str, min_lr_ratio: float) -> float:
    """Linear warmup to 1, then constant or cosine decay to ``min_lr_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def batch_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of one batch."""
    logits = model(inputs)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


@torch.no_grad()
def evaluate(model: nn.Module, batches: Sequence[Batch], device: torch.device) -> float:
    """Mean loss over fixed batches, in eval mode."""
    was_training = model.training
    model.eval()
    losses = [batch_loss(model, x.to(device), y.to(device)).item() for x, y in batches]
    model.train(was_training)
    return sum(losses) / len(losses)


@dataclass
class EvalPoint:
    step: int
    epoch: float
    tokens_seen: int
    train_loss: float
    val_loss: float


@dataclass
class TrainResult:
    steps: int
    tokens_seen: int
    history: list[EvalPoint] = field(default_factory=list)

    @property
    def final(self) -> EvalPoint:
        return self.history[-1]


def train_model(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: DataLoader,
    *,
    train_eval_batches: Sequence[Batch],
    val_eval_batches: Sequence[Batch],
    device: torch.device,
    total_steps: int,
    eval_freq: int,
    grad_accum: int = 1,
    grad_clip: float | None = 1.0,
    lr_at: Callable[[int], float] = lambda step: 1.0,
    sample_freq: int | None = None,
    on_eval: Callable[[EvalPoint, dict], None] = lambda point, extra: None,
    on_step: Callable[[int, dict], None] = lambda step, metrics: None,
    on_sample: Callable[[int, int], None] = lambda step, epoch: None,
    progress: bool = True,
) -> TrainResult:
    """Train for ``total_steps`` optimizer steps of ``grad_accum`` batches each.

    Evaluates before the first step, every ``eval_freq`` steps and after the last; samples
    after every epoch, or every ``sample_freq`` steps when given.
    """
    from tqdm.auto import tqdm

    steps_per_epoch = len(train_loader) // grad_accum
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    result = TrainResult(steps=0, tokens_seen=0)
    step, epoch, interval_tokens, interval_start = 0, 0, 0, time.perf_counter()

    def run_eval() -> None:
        nonlocal interval_tokens, interval_start
        elapsed = time.perf_counter() - interval_start
        point = EvalPoint(
            step=step,
            epoch=step / steps_per_epoch,
            tokens_seen=result.tokens_seen,
            train_loss=evaluate(model, train_eval_batches, device),
            val_loss=evaluate(model, val_eval_batches, device),
        )
        result.history.append(point)
        on_eval(point, {"tokens_per_sec": interval_tokens / elapsed if interval_tokens else 0.0})
        interval_tokens, interval_start = 0, time.perf_counter()

    model.train()
    run_eval()
    bar = tqdm(total=total_steps, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    while step < total_steps:
        batches = iter(train_loader)
        for _ in range(steps_per_epoch):
            for group, base_lr in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base_lr * lr_at(step)
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for _ in range(grad_accum):
                inputs, targets = next(batches)
                inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
                loss = batch_loss(model, inputs, targets) / grad_accum
                loss.backward()
                step_loss += loss.item()
                result.tokens_seen += inputs.numel()
                interval_tokens += inputs.numel()
            grad_norm = None
            if grad_clip is not None:
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip).item()
            optimizer.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}")
            metrics = {"train/batch_loss": step_loss, "lr": optimizer.param_groups[0]["lr"]}
            if grad_norm is not None:
                metrics["train/grad_norm"] = grad_norm
            on_step(step, metrics)
            if step % eval_freq == 0 or step == total_steps:
                run_eval()
            if sample_freq is not None and (step % sample_freq == 0 or step == total_steps):
                on_sample(step, epoch)
            if step == total_steps:
                break
        epoch += 1
        if sample_freq is None:
            on_sample(step, epoch)
    bar.close()
    result.steps = step
    return result
