"""The training loop: the tutorial's loop (zero_grad, backward, step; evaluate every
``eval_freq`` steps over ``eval_iter`` batches; a sample now and then) with gradient
accumulation, clipping and a warmup + cosine learning-rate schedule."""

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader

from gpt2exp.data.loaders import epoch_batches
from gpt2exp.devices import Precision

Batch = tuple[torch.Tensor, torch.Tensor]
FP32 = Precision()  # the default: no autocast


def make_optimizer(
    model: nn.Module, *, lr: float, weight_decay: float, betas: Sequence[float], eps: float,
    weight_decay_on: str = "matrices",
) -> torch.optim.AdamW:
    """AdamW that decays the weight matrices only, not biases or norms (or, with
    `weight_decay_on="all"`, every parameter, as `AdamW(model.parameters())` does); PyTorch's
    fused kernel (one pass over all parameters) on the CPU and CUDA. Either way there are two
    groups, matrices and the rest, so a run may resume with the other choice."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    rest_decay = weight_decay if weight_decay_on == "all" else 0.0
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": rest_decay}]
    fused = all(p.device.type in ("cpu", "cuda") for p in params) or None
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused)


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
    return model(inputs, targets=targets)


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Sequence[Batch], device: torch.device, precision: Precision = FP32
) -> float:
    """Mean loss over fixed batches, in eval mode."""
    was_training = model.training
    model.eval()
    with precision.autocast():
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
class TrainState:
    """Where a run is: everything besides the model, optimizer and RNGs that an exact resume needs.

    ``batch_in_epoch`` counts the batches of epoch ``epoch`` already trained on.
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    tokens_seen: int = 0
    best_val_loss: float = math.inf
    skipped_nonfinite: int = 0
    history: list[EvalPoint] = field(default_factory=list)

    @property
    def final(self) -> EvalPoint:
        return self.history[-1]

    def to_dict(self) -> dict:
        """Plain data, for a checkpoint."""
        return {**asdict(self), "history": [asdict(point) for point in self.history]}

    @classmethod
    def from_dict(cls, data: dict) -> "TrainState":
        return cls(**{**data, "history": [EvalPoint(**point) for point in data["history"]]})

    def realign(self, *, batch_size_before: int, batch_size: int, grad_accum: int, batches_per_epoch: int) -> None:
        """Keep the position inside the epoch when a resumed run takes batches of another size,
        accumulates another number of them, or has fewer an epoch: the windows seen count,
        rounded down to whole steps; past the epoch's end (`batches_per_epoch`, whole steps'
        batches), the next epoch starts."""
        batches = self.batch_in_epoch * batch_size_before // batch_size
        self.batch_in_epoch = batches - batches % grad_accum
        if self.batch_in_epoch >= batches_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0


class NonFiniteLoss(Exception):
    """A step's loss or gradient norm was NaN or infinite (and such steps are not skipped)."""

    def __init__(self, step: int, loss: float, grad_norm: float):
        self.step = step
        super().__init__(f"non-finite loss ({loss}, gradient norm {grad_norm}) at step {step}")


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
    state: TrainState | None = None,
    grad_accum: int = 1,
    grad_clip: float | None = 1.0,
    skip_nonfinite: bool = False,
    lr_at: Callable[[int], float] = lambda step: 1.0,
    sample_freq: int | None = None,
    checkpoint_freq: int | None = None,
    checkpoint_minutes: float | None = None,
    on_eval: Callable[[EvalPoint, dict], None] = lambda point, extra: None,
    on_step: Callable[[int, dict], None] = lambda step, metrics: None,
    on_sample: Callable[[int, int], None] = lambda step, epoch: None,
    on_checkpoint: Callable[..., None] = lambda state, *, periodic, is_best: None,
    should_stop: Callable[[], bool] = lambda: False,
    progress: bool = True,
    precision: Precision = FP32,
) -> TrainState:
    """Train from ``state`` (a fresh run when None) up to ``total_steps`` optimizer steps of
    ``grad_accum`` batches each; returns the state reached.

    Evaluates before the first step of a fresh run, every ``eval_freq`` steps and after the
    last; samples after every epoch, or every ``sample_freq`` steps when given, and after the
    last. After a step's eval, before its sample, calls ``on_checkpoint(state, periodic=...,
    is_best=...)``: periodic every ``checkpoint_freq`` steps, at the first step ``checkpoint_minutes``
    after the previous periodic one (or the start), after the last step and when ``should_stop()``
    turns true (training then returns early); is_best after an eval with a new best val loss,
    the first one included.

    The train loader's sampler must be an ``EpochSampler``: a resumed run starts inside its
    epoch without replaying batches.
    Raises ``NonFiniteLoss`` for a NaN/inf loss or gradient norm unless ``skip_nonfinite``, which
    skips the update instead and counts it in ``state.skipped_nonfinite``. The forward passes run
    under ``precision``'s autocast; with fp16 the loss is scaled and overflowing steps are skipped.
    """
    from tqdm.auto import tqdm

    state = state or TrainState()
    batches_per_epoch = len(train_loader) // grad_accum * grad_accum
    steps_per_epoch = batches_per_epoch // grad_accum
    for group in optimizer.param_groups:  # saved with the optimizer, so a resumed run keeps it
        group.setdefault("initial_lr", group["lr"])
    interval_tokens, interval_start = 0, time.perf_counter()
    scaler = precision.grad_scaler()

    def run_eval() -> bool:
        nonlocal interval_tokens, interval_start
        elapsed = time.perf_counter() - interval_start
        point = EvalPoint(
            step=state.step,
            epoch=state.step / steps_per_epoch,
            tokens_seen=state.tokens_seen,
            train_loss=evaluate(model, train_eval_batches, device, precision),
            val_loss=evaluate(model, val_eval_batches, device, precision),
        )
        state.history.append(point)
        on_eval(point, {"tokens_per_sec": interval_tokens / elapsed if interval_tokens else 0.0})
        interval_tokens, interval_start = 0, time.perf_counter()
        is_best = point.val_loss < state.best_val_loss
        state.best_val_loss = min(state.best_val_loss, point.val_loss)
        return is_best

    def train_step(batches) -> dict:
        nonlocal interval_tokens
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lr_at(state.step)
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for _ in range(grad_accum):
            inputs, targets = next(batches)
            inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            with precision.autocast():
                loss = batch_loss(model, inputs, targets) / grad_accum
            scaler.scale(loss).backward()
            step_loss += loss.item()
            state.tokens_seen += inputs.numel()
            interval_tokens += inputs.numel()
        state.batch_in_epoch += grad_accum
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or math.inf).item()
        metrics = {
            "train/batch_loss": step_loss, "lr": optimizer.param_groups[0]["lr"], "train/grad_norm": grad_norm,
        }
        if math.isfinite(step_loss) and (math.isfinite(grad_norm) or scaler.is_enabled()):
            scaler.step(optimizer)  # with fp16 the scaler skips a step whose gradients overflowed
            scaler.update()
        elif skip_nonfinite:
            state.skipped_nonfinite += 1
        else:
            raise NonFiniteLoss(state.step + 1, step_loss, grad_norm)
        if skip_nonfinite:
            metrics["train/skipped_nonfinite"] = state.skipped_nonfinite
        state.step += 1
        metrics |= {"tokens_seen": state.tokens_seen, "epoch": state.step / steps_per_epoch}
        return metrics

    model.train()
    if state.step == 0 and run_eval():
        on_checkpoint(state, periodic=False, is_best=True)  # best.pt, should no step improve on it
    last_periodic = time.monotonic()
    bar = tqdm(total=total_steps, initial=state.step, desc="train", unit="step", disable=not progress,
               dynamic_ncols=True)
    stop = False
    while state.step < total_steps and not stop:
        batches = epoch_batches(train_loader, state.epoch, skip_batches=state.batch_in_epoch)
        epoch = state.epoch
        while state.epoch == epoch and state.step < total_steps and not stop:
            metrics = train_step(batches)
            if state.batch_in_epoch == batches_per_epoch:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['train/batch_loss']:.3f}")
            on_step(state.step, metrics)
            last = state.step == total_steps
            is_best = run_eval() if state.step % eval_freq == 0 or last else False
            stop = should_stop()
            periodic = last or stop or (checkpoint_freq is not None and state.step % checkpoint_freq == 0)
            periodic = periodic or (checkpoint_minutes is not None
                                    and time.monotonic() - last_periodic >= 60 * checkpoint_minutes)
            if periodic or is_best:
                on_checkpoint(state, periodic=periodic, is_best=is_best)
            if periodic:
                last_periodic = time.monotonic()
            due = state.step % sample_freq == 0 if sample_freq is not None else state.epoch > epoch
            if due or last:
                on_sample(state.step, state.epoch)
    bar.close()
    return state
