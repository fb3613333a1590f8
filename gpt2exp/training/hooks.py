"""What a training run does when the loop calls back (`trainer.Hooks`): log steps and evals (with
tokens/s and MFU), write checkpoints, draw samples, stop on a signal; and, at the end, the loss
plot and the W&B model artifacts."""

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gpt2exp.config import DecodingConfig, TrainConfig
from gpt2exp.modeling.checkpoint import folder_bytes, save_checkpoint
from gpt2exp.modeling.decoding import sample_continuations
from gpt2exp.modeling.flops import rated_peak, train_flops_per_token
from gpt2exp.modeling.lora import saved_weights
from gpt2exp.modeling.text_metrics import generation_metrics
from gpt2exp.runs.layout import BEST_CHECKPOINT, RunLayout
from gpt2exp.runs.plots import plot_losses
from gpt2exp.tokenizer import get_encoding
from gpt2exp.training import distributed
from gpt2exp.training.fsdp import Sharded
from gpt2exp.training.interrupt import GracefulStop
from gpt2exp.training.rng import capture_rng_state
from gpt2exp.training.step_checkpoints import save_step_checkpoint
from gpt2exp.training.task_evals import TaskEvals
from gpt2exp.training.trainer import EvalPoint, Hooks, TrainState

log = logging.getLogger("gpt2exp.train")


def job_peak_flops(device: torch.device, precision: str) -> float | None:
    """The FLOP/s that the training log's MFU is measured against: the rated `precision` peak of
    the job's GPU, times its processes; None where none is known (the CPU, MPS, other GPUs: the
    bench measures one, which takes too long to do at every start). Says which, in one line."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    peak = rated_peak(device, precision)
    if peak is None:
        log.info("MFU n/a: no rated %s peak known for %s (python -m gpt2exp.bench measures this machine's)",
                 precision, name)
        return None
    processes = distributed.world().world_size
    log.info("MFU against the rated %s peak of %s, %.0f TFLOP/s%s", precision, name, peak / 1e12,
             f" x {processes} processes" if processes > 1 else "")
    return peak * processes


def capped_perplexity(loss: float) -> float:
    """exp(loss), the loss capped at 50 nats: a diverged run logs a finite number."""
    return math.exp(min(loss, 50.0))


class Sampler:
    """``sampler(step, epoch)``: a sample from `start_context` with the run's decoding. The final
    one (at `total_steps`, or with ``final=True``) draws `decoding.num_samples` (one when greedy)
    and scores them with generate's gen/* figures, logged and kept in `metrics`."""

    def __init__(self, decoding: DecodingConfig, start_context: str, model, tracker, total_steps: int | None = None):
        self.decoding, self.start_context, self.model, self.tracker = decoding, start_context, model, tracker
        self.total_steps = total_steps
        self.encoding = get_encoding()
        self.prompt_ids = self.encoding.encode(start_context, allowed_special="all")
        self.metrics: dict = {}

    def __call__(self, step: int, epoch: int | None, final: bool = False, model=None) -> None:
        """`model`: another than the sampler's (a sharded run's whole copy)."""
        final = final or step == self.total_steps
        out, seconds = sample_continuations(model or self.model, self.prompt_ids, self.decoding, num_samples=None if final else 1)
        count, settings = len(out.token_ids), self.decoding.settings()
        for i, token_ids in enumerate(out.token_ids):
            text = self.encoding.decode(token_ids)
            self.tracker.log_sample(step=step, prompt=self.start_context, text=text,
                                    settings={**settings, "sample": i} if count > 1 else settings)
            log.info("sample%s @ step %d%s: %s", f" {i}" if count > 1 else "", step,
                     "" if epoch is None else f" (epoch {epoch})", text.replace("\n", " "))
        if final:
            self.metrics = generation_metrics(out.new_tokens, out.logprobs, seconds)
            self.tracker.log_metrics(self.metrics, step=step)
            log.info(" | ".join(f"{key} {value:.4g}" for key, value in self.metrics.items()))


class ReplicaHooks(Hooks):
    """The hooks of a distributed job's ranks besides 0: they only take part in the decision
    to stop (rank 0 logs, checkpoints and samples for the job: `RunHooks`) and, when the model is
    `sharded` (`trainer.strategy=fsdp`), in gathering it whole for rank 0's checkpoints, samples
    and, at the evaluations where `tasks_due(step)`, task scores."""

    last_checkpoint: Path | None = None  # rank 0's to say
    last_step: int | None = None

    def __init__(self, stop: GracefulStop, sharded: Sharded | None = None, save_optimizer: bool = True,
                 tasks_due: Callable[[int], bool] | None = None):
        self.stop, self.sharded, self.save_optimizer, self.tasks_due = stop, sharded, save_optimizer, tasks_due

    def on_eval(self, point: EvalPoint, extra: dict) -> None:
        if self.sharded is not None and self.tasks_due is not None and self.tasks_due(point.step):
            self.sharded.whole_model()

    def should_stop(self) -> bool:
        return distributed.any_rank(self.stop.requested())

    def on_checkpoint(self, state: TrainState, *, periodic: bool, is_best: bool) -> None:
        if self.sharded is not None:  # the gathers of `RunHooks._write_checkpoint`, in its order
            self.stop.shielded(self._gather)(with_optimizer=periodic and self.save_optimizer)

    def _gather(self, *, with_optimizer: bool) -> None:
        assert self.sharded is not None
        self.sharded.weights()
        if with_optimizer:
            self.sharded.optimizer_state()

    def on_sample(self, step: int, epoch: int, final: bool = False) -> None:
        if self.sharded is not None:
            self.sharded.whole_model()


class RunHooks(ReplicaHooks):
    """A training run's hooks (rank 0's, in a distributed job): metrics to the tracker and the
    console, checkpoints into ``<run_dir>/checkpoints``, samples through `sampler`, and the stop
    on SIGINT/SIGTERM (`stop`) that every rank takes part in. With `peak_flops` (`job_peak_flops`),
    each evaluation also logs the interval's MFU."""

    def __init__(self, cfg: TrainConfig, resolved: dict, model, optimizer, tracker, run_dir: Path, *,
                 sampler: Sampler, stop: GracefulStop, wandb_group: str | None = None, resumed_from=None,
                 task_evals: TaskEvals | None = None, sharded: Sharded | None = None, peak_flops: float | None = None):
        super().__init__(stop, sharded, cfg.trainer.save_optimizer)  # on_eval below checks task_evals.due itself
        self.cfg, self.resolved, self.model, self.optimizer, self.tracker = cfg, resolved, model, optimizer, tracker
        self.peak_flops, self.flops_per_token = peak_flops, train_flops_per_token(model, cfg.model.context_length)
        self.run_dir, self.checkpoint_dir, self.wandb_group = run_dir, run_dir / RunLayout.CHECKPOINTS, wandb_group
        self.sampler, self.task_evals = sampler, task_evals
        self.last_checkpoint = resumed_from.path if resumed_from else None
        self.last_step = resumed_from.checkpoint["step"] if resumed_from else None
        self.started, self.stepped = time.perf_counter(), False

    def on_step(self, step: int, metrics: dict) -> None:
        self.tracker.log_metrics(metrics, step=step)
        if not self.stepped:
            self.stepped = True
            log.info("first step done %.1f s after training started (any first evaluation%s included)",
                     time.perf_counter() - self.started, " and compiling" if self.cfg.trainer.compile else "")

    def on_eval(self, point: EvalPoint, extra: dict) -> None:
        """The losses, and the interval's speed: `extra`'s tokens_per_sec and, against `peak_flops`,
        MFU (train/mfu: the model's training FLOPs at that speed, as a fraction of the peak)."""
        speed = extra["tokens_per_sec"]
        mfu = speed * self.flops_per_token / self.peak_flops if self.peak_flops and speed else None
        metrics = {
            "train/loss": point.train_loss,
            "val/loss": point.val_loss,
            "train/perplexity": capped_perplexity(point.train_loss),
            "val/perplexity": capped_perplexity(point.val_loss),
            "tokens_seen": point.tokens_seen,
            "epoch": point.epoch,
            **extra,
            **({"train/mfu": mfu} if mfu is not None else {}),
        }
        self.tracker.log_metrics(metrics, step=point.step)
        log.info(
            "step %5d | epoch %.2f | train loss %.3f ppl %.1f | val loss %.3f ppl %.1f | %s tokens | %.0f tok/s%s",
            point.step, point.epoch, point.train_loss, metrics["train/perplexity"], point.val_loss,
            metrics["val/perplexity"], f"{point.tokens_seen:,}", speed, "" if mfu is None else f" | MFU {mfu:.1%}",
        )
        if self.task_evals is not None and self.task_evals.due(point.step):
            self.task_evals(point, model=self.sharded.whole_model() if self.sharded else None)

    def on_sample(self, step: int, epoch: int, final: bool = False) -> None:
        self.sampler(step, epoch, final=final, model=self.sharded.whole_model() if self.sharded else None)

    def on_checkpoint(self, state: TrainState, *, periodic: bool, is_best: bool) -> None:
        """`checkpoints/step-<step>.pt` (and last.pt) when periodic, with AdamW's state unless
        `trainer.save_optimizer=false`; best.pt, weights only, on a new best val loss. A second
        signal lets the write finish first."""
        self.stop.shielded(self._write_checkpoint)(state, periodic=periodic, is_best=is_best)

    def _write_checkpoint(self, state: TrainState, *, periodic: bool, is_best: bool) -> None:
        trainer_cfg = self.cfg.trainer
        payload = {
            "model": self.sharded.weights() if self.sharded else saved_weights(self.model),  # LoRA's: the adapter
            "config": self.resolved,
            "extra": {
                "train_state": state.to_dict(),
                "rng": capture_rng_state(),
                "wandb": {"run_id": self.tracker.run_id, "group": self.wandb_group},
                "world_size": distributed.world().world_size,  # data.batch_size is per process
                "lora_base": getattr(self.model, "lora_base", None),  # the base a LoRA adapter fits
            },
        }
        if periodic:
            optimizer_state = None
            if trainer_cfg.save_optimizer:
                optimizer_state = self.sharded.optimizer_state() if self.sharded else self.optimizer.state_dict()
            self.last_checkpoint = save_step_checkpoint(
                self.checkpoint_dir, step=state.step, keep_last=trainer_cfg.keep_last,
                optimizer=optimizer_state, **payload,
            )
            self.last_step = state.step
        if is_best and trainer_cfg.keep_best:
            save_checkpoint(self.checkpoint_dir / BEST_CHECKPOINT, step=state.step, optimizer=None, **payload)

    def log_models(self, state: TrainState) -> None:
        """`logger.log_model`: best (best.pt, alias "best"), last (the final checkpoint, alias
        "latest") or all (both) as versions of the run's W&B model artifact."""
        choice = self.cfg.logger.log_model
        best = self.checkpoint_dir / BEST_CHECKPOINT
        if choice in ("best", "all") and best.is_file():
            best_step = min(state.history, key=lambda point: point.val_loss)
            self.tracker.log_model(best, aliases=["best"], metadata={"step": best_step.step,
                                                                     "val_loss": best_step.val_loss})
        if choice in ("last", "all") and self.last_checkpoint is not None:
            self.tracker.log_model(self.last_checkpoint, aliases=["latest"],
                                   metadata={"step": state.step, "val_loss": state.final.val_loss})

    def checkpoint_bytes(self) -> int:
        return folder_bytes(self.checkpoint_dir)

    def plot(self, state: TrainState) -> None:
        """The loss plot over the whole run (a resumed one included)."""
        history = state.history
        plot_path = plot_losses(
            [p.epoch for p in history], [p.tokens_seen for p in history],
            [p.train_loss for p in history], [p.val_loss for p in history], self.run_dir / RunLayout.LOSS_PLOT,
        )
        self.tracker.log_image("loss_plot", plot_path)
