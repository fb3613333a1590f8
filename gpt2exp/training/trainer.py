"""The training loop: the tutorial's loop (zero_grad, backward, step; evaluate every
``eval_freq`` steps over ``eval_iter`` batches; a sample now and then) with gradient
accumulation, clipping and a learning-rate schedule (`lr_at`, see training/schedules.py)."""

import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import cast

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from gpt2exp.config import EarlyStoppingConfig, TrainerConfig
from gpt2exp.data import DataBundle, SlidingWindowDataset, create_dataloader, epoch_batches, eval_batches
from gpt2exp.devices import FP32, Precision
from gpt2exp.training import distributed
from gpt2exp.training.fsdp import is_sharded

Batch = tuple[torch.Tensor, torch.Tensor]
log = logging.getLogger("gpt2exp.train")


def total_steps(cfg: TrainerConfig, train_batches: int) -> int:
    """`cfg.max_steps`, or `cfg.epochs` epochs of steps of `cfg.grad_accum` batches each."""
    return cfg.max_steps or cfg.epochs * (train_batches // cfg.grad_accum)


def overfit_data(data: DataBundle, batches: int, *, context_length: int, stride: int, seed: int, rank: int = 0,
                 world_size: int = 1) -> DataBundle:
    """`trainer.overfit_batches`: the windows of the first `batches` train batches (of each of
    `world_size` processes), in order every epoch, and the same windows as the val split, so that
    both losses show how well the model learns them by heart."""
    train = data.train_loader
    batch_size = loader_batch_size(train)
    windows = batches * batch_size * world_size
    tokens = loader_windows(train).tokens[: (windows - 1) * stride + context_length + 1]
    loader = functools.partial(create_dataloader, tokens, batch_size=batch_size, context_length=context_length,
                               stride=stride, seed=seed, shuffle=False, pin_memory=train.pin_memory)
    val_loader = loader(drop_last=False)
    log.info("trainer.overfit_batches=%d: training and validating on the same %d windows (%s tokens)", batches,
             len(loader_windows(val_loader)), f"{len(tokens):,}")
    return DataBundle(loader(drop_last=True, rank=rank, world_size=world_size), val_loader, len(tokens), len(tokens))


def loader_windows(loader: DataLoader) -> SlidingWindowDataset:
    """The windows a loader of `create_dataloader` batches."""
    return cast(SlidingWindowDataset, loader.dataset)


def loader_batch_size(loader: DataLoader) -> int:
    """The batch size of a loader of `create_dataloader` (always set: it batches by a fixed size)."""
    return cast(int, loader.batch_size)


def batch_loss(model: Callable[..., torch.Tensor], inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of one batch."""
    return model(inputs, targets=targets)


@torch.no_grad()
def mean_loss(
    model: nn.Module, batches: Sequence[Batch], device: torch.device, precision: Precision = FP32
) -> float:
    """Mean loss over fixed batches, in eval mode; in a distributed job each rank takes its
    share of the batches and the mean is the whole set's."""
    place = distributed.world()
    share = batches[place.rank :: place.world_size]
    # A sharded model's forward is a collective: each rank runs as many as the rank with the most.
    rounds = -(-len(batches) // place.world_size) if is_sharded(model) else len(share)
    was_training = model.training
    model.eval()
    with precision.autocast():
        losses = [batch_loss(model, x.to(device), y.to(device)).item() for x, y in share]
        for x, y in batches[: rounds - len(share)]:  # outcomes unused
            batch_loss(model, x.to(device), y.to(device))
    model.train(was_training)
    total, count = distributed.all_sum([sum(losses), len(losses)])
    return total / count


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
    evals_without_improvement: int = 0  # in a row, by `trainer.early_stopping.min_delta`
    stopped_early: bool = False
    history: list[EvalPoint] = field(default_factory=list)

    @property
    def final(self) -> EvalPoint:
        return self.history[-1]

    def patience_spent(self, cfg: EarlyStoppingConfig) -> bool:
        """Whether `cfg.patience` evaluations in a row brought no new best val loss (off: never)."""
        patience = cfg.patience or 0
        return patience > 0 and self.evals_without_improvement >= patience

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
        if not math.isfinite(loss):
            what = f"loss ({loss})" + (f" and gradient norm ({grad_norm})" if not math.isfinite(grad_norm) else "")
        else:
            what = f"gradient norm ({grad_norm}; loss {loss:.4g})"
        super().__init__(f"non-finite {what} at step {step}")


class Hooks:
    """What the loop calls back into; these do nothing (see `gpt2exp.training.hooks.RunHooks` for a run's)."""

    def on_step(self, step: int, metrics: dict) -> None:
        """After every optimizer step, with its batch loss, learning rate and gradient norm."""

    def on_eval(self, point: EvalPoint, extra: dict) -> None:
        """After every evaluation; `extra` holds the interval's tokens_per_sec."""

    def on_checkpoint(self, state: TrainState, *, periodic: bool, is_best: bool) -> None:
        """When a checkpoint is due (see `Trainer.fit`)."""

    def on_sample(self, step: int, epoch: int, final: bool = False) -> None:
        """When a sample is due: after every epoch, or every `sample_freq` steps, and the last
        (`final`: after the last step, or an early stop)."""

    def should_stop(self) -> bool:
        """Checked after every step: True saves a checkpoint and ends training early."""
        return False


class Trainer:
    """The tutorial's loop over one run's optimizer steps (`fit`), each of ``cfg.grad_accum``
    batches of ``data.train_loader`` (`step`), with an evaluation now and then (`evaluate`).

    ``state`` is where training starts (a fresh run when None) and, as it goes, where it is.
    ``lr_at(step)`` scales each parameter group's initial learning rate. The train loader's
    sampler must be an ``EpochSampler``: a resumed run starts inside its epoch without replaying
    batches. In a distributed job ``model`` is the DistributedDataParallel module (or the sharded
    model, `trainer.strategy=fsdp`) and each rank's loader holds its share of the batches; losses,
    evaluations and token counts are the whole job's.
    The forward passes run under ``precision``'s autocast; with fp16 the loss is scaled and
    overflowing steps are skipped. With ``cfg.compile`` the training step's forward runs through
    ``torch.compile``; evaluation does not.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        data: DataBundle,
        cfg: TrainerConfig,
        hooks: Hooks | None = None,
        *,
        device: torch.device,
        state: TrainState | None = None,
        lr_at: Callable[[int], float] = lambda step: 1.0,
        precision: Precision = FP32,
    ):
        self.model, self.optimizer, self.cfg, self.device, self.precision = model, optimizer, cfg, device, precision
        self.hooks = hooks if hooks is not None else Hooks()
        self.state = state if state is not None else TrainState()
        self.lr_at = lr_at
        self.train_loader = data.train_loader
        self.world_size = distributed.world().world_size
        self.total_steps = total_steps(cfg, len(self.train_loader))
        self.batches_per_epoch = len(self.train_loader) // cfg.grad_accum * cfg.grad_accum
        self.steps_per_epoch = self.batches_per_epoch // cfg.grad_accum
        self.train_eval_batches, self.val_eval_batches = (  # of the job's batch size: the same set for any number of ranks
            eval_batches(loader_windows(loader), num_batches=cfg.eval_iter,
                         batch_size=loader_batch_size(self.train_loader) * self.world_size)
            for loader in (self.train_loader, data.val_loader))
        for group in optimizer.param_groups:  # saved with the optimizer, so a resumed run keeps it
            group.setdefault("initial_lr", group["lr"])
        self.interval_tokens, self.interval_start = 0, time.perf_counter()  # since the last evaluation
        self.scaler = precision.grad_scaler()
        # Only the training step is compiled, for static shapes: evaluation runs the model as it is, so
        # it adds no compile before the first step and no graph for a split's last, partial batch.
        self.forward = torch.compile(model, dynamic=False) if cfg.compile else model

    def fit(self) -> TrainState:
        """Train up to `total_steps` optimizer steps; returns the state reached.

        Evaluates (``cfg.eval_iter`` fixed batches of each split) before the first step of a fresh
        run, every ``cfg.eval_freq`` steps and after the last; samples after every epoch, or every
        ``cfg.sample_freq`` steps when given, and after the last. After a step's eval, before its
        sample, calls ``hooks.on_checkpoint(state, periodic=..., is_best=...)``: periodic every
        ``cfg.checkpoint_freq`` steps, at the first step ``cfg.checkpoint_minutes`` after the previous
        periodic one (or the start), after the last step and when ``hooks.should_stop()`` turns true
        (training then returns early); is_best after an eval with a new best val loss, the first one
        included. With ``cfg.early_stopping.patience``, training ends (a last checkpoint and sample, as
        after the last step) at the evaluation that makes it that many in a row without a val loss below
        the best so far by ``cfg.early_stopping.min_delta``; ``state.stopped_early`` then says so.
        Raises ``NonFiniteLoss`` for a NaN/inf loss or gradient norm unless ``cfg.skip_nonfinite``,
        which skips the update instead and counts it in ``state.skipped_nonfinite``.
        """
        state, cfg, hooks = self.state, self.cfg, self.hooks
        state.stopped_early = state.stopped_early and state.patience_spent(cfg.early_stopping)  # a resume's patience
        self.model.train()
        if state.step == 0 and self.evaluate():
            hooks.on_checkpoint(state, periodic=False, is_best=True)  # best.pt, should no step improve on it
        last_periodic = time.monotonic()
        bar = tqdm(total=self.total_steps, initial=state.step, desc="train", unit="step", disable=None if cfg.progress else True,
                   dynamic_ncols=True)
        stop = False
        while state.step < self.total_steps and not stop and not state.stopped_early:
            batches = epoch_batches(self.train_loader, state.epoch, skip_batches=state.batch_in_epoch)
            epoch = state.epoch
            while state.epoch == epoch and state.step < self.total_steps and not stop and not state.stopped_early:
                metrics = self.step(batches)
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['train/batch_loss']:.3f}")
                hooks.on_step(state.step, metrics)
                evaluated = state.step % cfg.eval_freq == 0 or state.step == self.total_steps
                is_best = self.evaluate() if evaluated else False
                last = state.step == self.total_steps or (evaluated and self._stop_early())
                stop = hooks.should_stop()
                periodic = last or stop or (cfg.checkpoint_freq is not None and state.step % cfg.checkpoint_freq == 0)
                periodic = periodic or (cfg.checkpoint_minutes is not None and distributed.any_rank(  # ranks agree
                    time.monotonic() - last_periodic >= 60 * cfg.checkpoint_minutes))
                if periodic or is_best:
                    hooks.on_checkpoint(state, periodic=periodic, is_best=is_best)
                if periodic:
                    last_periodic = time.monotonic()
                due = state.step % cfg.sample_freq == 0 if cfg.sample_freq is not None else state.epoch > epoch
                if due or last:
                    hooks.on_sample(state.step, state.epoch, final=last)
        bar.close()
        return state

    def step(self, batches: Iterator[Batch]) -> dict:
        """One optimizer step on the next ``cfg.grad_accum`` of `batches` (zero_grad, backward, step);
        returns its metrics (batch loss, learning rate, gradient norm, tokens seen, epoch)."""
        state, optimizer, scaler, grad_accum = self.state, self.optimizer, self.scaler, self.cfg.grad_accum
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * self.lr_at(state.step)
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for micro_step in range(grad_accum):
            inputs, targets = next(batches)
            inputs, targets = inputs.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)
            # DistributedDataParallel: all-reduce the gradients once, on the step's last backward.
            last = micro_step == grad_accum - 1
            no_sync = getattr(self.model, "no_sync", None)
            with contextlib.nullcontext() if last or no_sync is None else no_sync():
                with self.precision.autocast():
                    loss = batch_loss(self.forward, inputs, targets) / grad_accum
                scaler.scale(loss).backward()
            step_loss += loss.item()
            state.tokens_seen += inputs.numel() * self.world_size
            self.interval_tokens += inputs.numel() * self.world_size
        step_loss = distributed.mean(step_loss)
        state.batch_in_epoch += grad_accum
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip or math.inf).item()
        metrics = {
            "train/batch_loss": step_loss, "lr": optimizer.param_groups[0]["lr"], "train/grad_norm": grad_norm,
        }
        if math.isfinite(step_loss) and (math.isfinite(grad_norm) or scaler.is_enabled()):
            scaler.step(optimizer)  # with fp16 the scaler skips a step whose gradients overflowed
            scaler.update()
        elif self.cfg.skip_nonfinite:
            state.skipped_nonfinite += 1
        else:
            raise NonFiniteLoss(state.step + 1, step_loss, grad_norm)
        if self.cfg.skip_nonfinite:
            metrics["train/skipped_nonfinite"] = state.skipped_nonfinite
        state.step += 1
        if state.batch_in_epoch == self.batches_per_epoch:
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        return metrics | {"tokens_seen": state.tokens_seen, "epoch": state.step / self.steps_per_epoch}

    def evaluate(self) -> bool:
        """The mean loss of each split's fixed batches at this step, added to ``state.history`` and
        passed to ``hooks.on_eval``; returns whether the val loss is the best so far."""
        state, min_delta = self.state, self.cfg.early_stopping.min_delta
        elapsed = time.perf_counter() - self.interval_start
        point = EvalPoint(
            step=state.step,
            epoch=state.step / self.steps_per_epoch,
            tokens_seen=state.tokens_seen,
            train_loss=mean_loss(self.model, self.train_eval_batches, self.device, self.precision),
            val_loss=mean_loss(self.model, self.val_eval_batches, self.device, self.precision),
        )
        # Early stopping's reference: the last val loss that counted as an improvement (as Lightning's).
        reference = state.history[-1 - state.evals_without_improvement].val_loss if state.history else math.inf
        improved = point.val_loss < reference - min_delta
        state.evals_without_improvement = 0 if improved else state.evals_without_improvement + 1
        state.history.append(point)
        self.hooks.on_eval(point, {"tokens_per_sec": self.interval_tokens / elapsed if self.interval_tokens else 0.0})
        self.interval_tokens, self.interval_start = 0, time.perf_counter()
        is_best = point.val_loss < state.best_val_loss
        state.best_val_loss = min(state.best_val_loss, point.val_loss)
        return is_best

    def _stop_early(self) -> bool:
        """`trainer.early_stopping`: True (and one line saying why) once its patience is spent."""
        state, early_stopping = self.state, self.cfg.early_stopping
        if not state.patience_spent(early_stopping):
            return False
        state.stopped_early = True
        reference = state.history[-1 - state.evals_without_improvement]
        min_delta = early_stopping.min_delta
        log.info("early stopping at step %d of %d: %d evaluations without a val loss below %.4f (step %d's)%s "
                 "(trainer.early_stopping.patience=%d); the run ends with this step's checkpoint", state.step,
                 self.total_steps, state.evals_without_improvement, reference.val_loss, reference.step,
                 f" minus {min_delta:g} (trainer.early_stopping.min_delta)" if min_delta else "",
                 early_stopping.patience)
        return True
