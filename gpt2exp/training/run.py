"""One training run from its typed config: plan it (every check before a file is written),
train it (or resume it, or adopt the sweep's identical model and only sample), score it, and
return its summary. The launcher (`gpt2exp.train`, Hydra) supplies the `RunContext`."""

import json
import logging
import signal
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NoReturn, cast

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gpt2exp.config import InferenceConfig, TrainConfig, plain
from gpt2exp.data import DataBundle, build_data, has_test_split, load_eval_text
from gpt2exp.devices import Precision, resolve_device, resolve_precision
from gpt2exp.errors import AlreadyComplete, UserError
from gpt2exp.evaluation.sliding_windows import default_stride, score_text
from gpt2exp.modeling.checkpoint import format_bytes
from gpt2exp.modeling.inference_layout import check_settings, to_inference_layout
from gpt2exp.modeling.lora import apply_lora, check_lora, is_lora, load_adapter, merged_model
from gpt2exp.modeling.model import GPTModel
from gpt2exp.modeling.trained import Base, check_same_base, load_trained_model, read_base, read_base_weights
from gpt2exp.runs import folder as run_folder
from gpt2exp.runs.layout import RunLayout
from gpt2exp.runs.tracking import NullTracker, Tracker
from gpt2exp.tokenizer import get_encoding
from gpt2exp.training import distributed, reuse
from gpt2exp.training.fsdp import Sharded, load_optimizer_state, shard
from gpt2exp.training.hooks import ReplicaHooks, RunHooks, Sampler, capped_perplexity, job_peak_flops
from gpt2exp.training.interrupt import GracefulStop
from gpt2exp.training.optimizers import make_optimizer
from gpt2exp.training.resume import ResumePoint, find_resume_point
from gpt2exp.training.rng import restore_rng_state
from gpt2exp.training.schedules import lr_multiplier
from gpt2exp.training.task_evals import TaskEvals, tasks_due
from gpt2exp.training.trainer import (
    NonFiniteLoss,
    Trainer,
    TrainState,
    overfit_data,
    total_steps,
)

log = logging.getLogger("gpt2exp.train")


@dataclass
class RunContext:
    """What a run needs from its launcher."""

    run_dir: Path
    outputs_root: Path | None  # where `trainer.resume=auto` looks for earlier runs (None: in run_dir only)
    resume_command: str  # the command that continues this run
    multirun: bool = False  # a failure then fails this job (raises) instead of exiting
    progress: bool = True  # False when parallel jobs share the console


@dataclass
class RunPlan:
    """A run whose inputs all checked out: its resolved config, device and precision, data,
    length and resume point."""

    resolved: dict
    device: torch.device
    precision: Precision
    data: DataBundle
    total_steps: int
    resume: ResumePoint | None
    test_text: str | None = None  # the held-out split rank 0 scores at the end (`trainer.test`)
    base: Base | None = None  # a LoRA run's base, read and checked before anything is written


def plan_run(cfg: TrainConfig, ctx: RunContext) -> RunPlan:
    """Check everything a user can get wrong (resume folder, data, model size) before a model
    is built or a file is written; raises UserError naming the key."""
    cfg.model.check_fits_in_memory()
    place = distributed.world()
    device = resolve_device(cfg.trainer.device)
    if place.distributed and device.type == "cuda":
        device = torch.device("cuda", place.local_rank)
    precision = resolve_precision(cfg.trainer.precision, device)
    if cfg.trainer.strategy == "fsdp":
        _check_fsdp(cfg, place.distributed, precision)
    base = None
    if cfg.model.lora.rank:
        check_lora(cfg.model)
        base = read_base(cfg.model)
    resolved = plain(cfg)
    own_folder = run_folder.claimed(ctx.run_dir)
    # A folder that already holds a run can only be continued: from its own checkpoints (`auto`:
    # or afresh, when it holds this run's config and no checkpoint yet).
    held = own_folder.held_configs() if own_folder and own_folder.held_run else None
    root = None if held is not None else ctx.outputs_root
    # In a distributed job rank 0 (which owns the folder) finds the run to resume; the others are
    # told its folder and read its checkpoint themselves.
    found = distributed.main_shares(
        lambda: find_resume_point(cfg.trainer.resume, resolved, run_dir=ctx.run_dir, root=root, held_configs=held),
        share=lambda point: str(point.run_dir) if point is not None else None)
    resume = (find_resume_point(found, resolved, run_dir=ctx.run_dir, root=ctx.outputs_root)
              if isinstance(found, str) else found)
    if base is not None and resume is not None:
        check_same_base(resume.checkpoint, base, f"trainer.resume: '{resume.path}'")
    data = distributed.main_first(lambda: build_data(  # rank 0 tokenizes into the shared cache first
        cfg.data, context_length=cfg.model.context_length, seed=cfg.seed, pin_memory=device.type == "cuda",
        rank=place.rank, world_size=place.world_size))
    if cfg.trainer.overfit_batches:
        data = overfit_data(data, cfg.trainer.overfit_batches, context_length=cfg.model.context_length,
                            stride=cast(int, cfg.data.stride), seed=cfg.seed, rank=place.rank, world_size=place.world_size)
    grad_accum = cfg.trainer.grad_accum
    if len(data.train_loader) < grad_accum:
        raise UserError(
            f"trainer.grad_accum={grad_accum} is more than the {len(data.train_loader)} "
            "training batches of an epoch; lower it or data.batch_size"
        )
    steps = total_steps(cfg.trainer, len(data.train_loader))
    resumed = TrainState.from_dict(resume.checkpoint["extra"]["train_state"]) if resume is not None else None
    stopped_early = resumed is not None and resumed.stopped_early and resumed.patience_spent(cfg.trainer.early_stopping)
    if resume is not None and (resume.checkpoint["step"] >= steps or stopped_early):
        summary = _read_summary(resume.run_dir)
        how = ", stopped early: raise trainer.early_stopping.patience (0: off) to go on" if stopped_early else ""
        raise AlreadyComplete(
            f"run {resume.run_dir} is already complete (step {resume.checkpoint['step']} of {steps}{how}); "
            f"its checkpoint: {RunLayout.last_checkpoint(resume.run_dir)}; nothing new written",
            result=summary.get("final/val_loss", resume.checkpoint["extra"]["train_state"]["best_val_loss"]),
        )
    # Rank 0 scores the test split: the others hear only whether reading it worked.
    test_text = distributed.main_shares(lambda: _test_text(cfg), share=lambda text: None)
    if test_text is not None and device.type == "cpu":  # refused now rather than after training
        check_settings(cfg.inference)
    return RunPlan(resolved, device, precision, data, steps, resume, test_text, base)


def _check_fsdp(cfg: TrainConfig, distributed_job: bool, precision: Precision) -> None:
    """What `trainer.strategy=fsdp` cannot do; raises UserError naming the key."""
    if not distributed_job:
        raise UserError("trainer.strategy=fsdp shards the model over the processes of a torchrun job, and this is "
                        "one process: launch it with torchrun --nproc_per_node=N (N >= 2), or use trainer.strategy=ddp")
    if cfg.model.lora.rank:
        raise UserError(f"model.lora.rank={cfg.model.lora.rank} with trainer.strategy=fsdp: a LoRA run trains only "
                        "its adapters and keeps the base frozen, so a replica per process fits; use trainer.strategy=ddp")
    if precision.name == "fp16":
        raise UserError("trainer.precision=fp16 with trainer.strategy=fsdp: the fp16 loss scaler is not sharded; "
                        "use trainer.precision=bf16 (or fp32)")
    if cfg.optimizer.name == "muon":
        raise UserError("optimizer.name=muon with trainer.strategy=fsdp: Muon orthogonalises whole weight matrices, "
                        "which FSDP shards; use optimizer.name=adamw, or trainer.strategy=ddp")


def _test_text(cfg: TrainConfig) -> str | None:
    """The source's test split when `trainer.test` is on (null: on when the source has one and it
    can be read, off otherwise; see `data.has_test_split`)."""
    test, data = cfg.trainer.test, cfg.data
    if test is False or (test is None and not has_test_split(data)):
        return None
    if not has_test_split(data):
        source = "data=hf on local files" if data.source == "hf" else f"data.source={data.source!r}"
        raise UserError(f"trainer.test=true needs a test split: {source} has none (use data=wikitext2, or "
                        "python -m gpt2exp.eval data=text data.path=... on a held-out file)")
    try:
        return load_eval_text(data, split="test")
    except UserError as err:
        if test:
            raise
        log.warning("trainer.test: no test split (%s); the run ends without it", err)
        return None


def _read_summary(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / RunLayout.SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def run_training(cfg: TrainConfig, plan: RunPlan, ctx: RunContext, tracker: Tracker | NullTracker,
                 wandb_group: str | None) -> dict:
    """The tutorial's run (model, optimizer, the loop, the loss plot, checkpoints), from the plan's
    resume point if any; returns its summary (the final val loss alone on ranks besides 0).
    SIGINT/SIGTERM save a checkpoint and exit 130/143 saying how to resume; a non-finite loss exits
    1 naming the step (a multirun fails that job only)."""
    place = distributed.world()
    model = _build_model(cfg, plan)
    data = plan.data
    log.info(
        "model %s parameters on %s (%s) | data %s: %d train / %d val tokens | %d steps | run folder %s",
        f"{model.num_parameters():,}", plan.device, plan.precision.name, cfg.data.source, data.train_tokens,
        data.val_tokens, plan.total_steps, ctx.run_dir,
    )
    if plan.resume is not None:
        _load_weights(plan.resume, model)
    train_forward = STRATEGIES[cfg.trainer.strategy](model, plan) if place.distributed else model
    optimizer = make_optimizer(model, cfg.optimizer)  # after sharding: FSDP's optimizer steps each rank's shards
    sharded = Sharded(model, optimizer) if cfg.trainer.strategy == "fsdp" else None
    state = TrainState()
    if plan.resume is not None:
        state = _restore(cfg, plan.resume, optimizer, len(data.train_loader), sharded)
        tracker.carry_over(plan.resume.run_dir, state.step)
    elif (ctx.run_dir / RunLayout.METRICS).exists():  # an attempt stopped before its first checkpoint: all redone
        tracker.carry_over(ctx.run_dir, up_to_step=-1)
    sampler = Sampler(cfg.decoding, cfg.trainer.start_context, model, tracker, plan.total_steps)
    task_evals = TaskEvals(cfg, model, tracker, plan.total_steps) if cfg.trainer.eval_tasks and place.main else None
    with GracefulStop() as stop:
        hooks = RunHooks(cfg, plan.resolved, model, optimizer, tracker, ctx.run_dir, sampler=sampler, stop=stop,
                         task_evals=task_evals,
                         wandb_group=wandb_group, resumed_from=plan.resume, sharded=sharded,
                         peak_flops=job_peak_flops(plan.device, plan.precision.name)) if (
            place.main) else ReplicaHooks(stop, sharded, cfg.trainer.save_optimizer,
                                          tasks_due(cfg.trainer, plan.total_steps) if cfg.trainer.eval_tasks else None)
        if plan.resume is not None:
            restore_rng_state(plan.resume.checkpoint["extra"]["rng"])
        trainer_cfg = cfg.trainer if ctx.progress and place.main else replace(cfg.trainer, progress=False)
        try:
            state = Trainer(train_forward, optimizer, data, trainer_cfg, hooks, device=plan.device, state=state,
                            lr_at=lambda step: lr_multiplier(step, plan.total_steps, cfg.optimizer),
                            precision=plan.precision).fit()
        except NonFiniteLoss as err:
            _fail(tracker, ctx, f"{err}; last good checkpoint: {hooks.last_checkpoint or 'none yet'}; lower "
                  "optimizer.lr, or set trainer.skip_nonfinite=true to skip such steps")
        except KeyboardInterrupt:  # a second signal: stop now, from the last checkpoint written
            stop.signum = stop.signum or signal.SIGINT
        except OSError as err:
            if not err.filename:
                raise
            _fail(tracker, ctx, f"cannot write {err.filename} ({err.strerror}); the last good checkpoint is "
                  f"{hooks.last_checkpoint or 'none yet'}; resume with: {ctx.resume_command}")
    if stop.requested():
        _exit_stopped(tracker, ctx, stop, hooks, state)
    # A sharded model is gathered (every rank takes part) for rank 0 to score the test split.
    whole = sharded.whole_model() if sharded and distributed.broadcast(plan.test_text is not None) else None
    if not isinstance(hooks, RunHooks):  # another rank than 0
        return {"final/val_loss": state.final.val_loss}
    hooks.plot(state)
    hooks.log_models(state)
    final = state.final
    test = _score_test(plan.test_text, whole or model, plan.precision, cfg.inference, tracker, state.step,
                       progress=ctx.progress)
    checkpoint_bytes = hooks.checkpoint_bytes()
    log.info("done: val loss %.3f (first %.3f) | checkpoint %s | checkpoints take %s", final.val_loss,
             state.history[0].val_loss, hooks.last_checkpoint, format_bytes(checkpoint_bytes))
    return {
        "final/train_loss": final.train_loss,
        "final/val_loss": final.val_loss,
        "final/val_perplexity": capped_perplexity(final.val_loss),
        "best/val_loss": state.best_val_loss,
        "steps": state.step,
        "tokens_seen": state.tokens_seen,
        "skipped_nonfinite": state.skipped_nonfinite,
        "stopped_early": state.stopped_early,
        "checkpoint_bytes": checkpoint_bytes,
        **sampler.metrics,
        **(task_evals.metrics if task_evals else {}),
        **test,
    }


def _build_model(cfg: TrainConfig, plan: RunPlan) -> GPTModel:
    """The run's model on its device: fresh, from `model.init`'s weights, or a LoRA run's frozen
    base with its adapters (a resumed run's weights come from its checkpoint, later). Only a fresh
    model is initialized at random; weights that are loaded next start unfilled."""
    options = {"activation_checkpointing": cfg.trainer.activation_checkpointing}
    if plan.base is None and plan.resume is None and cfg.model.init is None:
        return GPTModel(cfg.model, **options).to(plan.device)
    model = GPTModel.unfilled(cfg.model, plan.device, **options)
    if plan.base is not None:
        model.load_state_dict(plan.base.weights)
        plan.base.weights.clear()  # the model holds them now
        model = apply_lora(model, plan.base.identity)
        log.info("model.lora: rank %d adapters on %s train %s parameters; the base (model.init=%s, sha256 %s) "
                 "stays frozen", cfg.model.lora.rank, ", ".join(cfg.model.lora.targets),
                 f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,}", cfg.model.init,
                 plan.base.identity["sha256"][:12])
    elif plan.resume is None and cfg.model.init is not None:
        model.load_state_dict(read_base_weights(cfg.model))
        log.info("model.init: weights from %s", cfg.model.init)
    return model


def _ddp(model: GPTModel, plan: RunPlan) -> nn.Module:
    """A whole replica per process; gradients all-reduced in backward; rank 0's weights broadcast now."""
    device = plan.device
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                   forward_sync_buffers=False)


def _fsdp(model: GPTModel, plan: RunPlan) -> nn.Module:
    """Weights, gradients and optimizer state sharded over the processes (`gpt2exp.training.fsdp`)."""
    return shard(model, plan.precision)


# `trainer.strategy`: how a distributed job wraps the model for training.
STRATEGIES = {"ddp": _ddp, "fsdp": _fsdp}


def _fail(tracker: Tracker | NullTracker, ctx: RunContext, message: str) -> NoReturn:
    """End the W&B run as failed; a single run exits 1 with `message`, a multirun job fails."""
    tracker.finish(exit_code=1)
    if ctx.multirun:
        raise RuntimeError(message)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def _exit_stopped(tracker: Tracker | NullTracker, ctx: RunContext, stop: GracefulStop, hooks: ReplicaHooks,
                  state: TrainState) -> NoReturn:
    """A signal stopped training: say how to resume (from the last checkpoint) and exit 130/143."""
    tracker.finish(exit_code=stop.exit_code)
    if not isinstance(hooks, RunHooks):  # another rank: rank 0 says it
        sys.exit(stop.exit_code)
    if hooks.last_step is None:
        print(f"interrupted at step {state.step}, before the run's first checkpoint: nothing to resume",
              file=sys.stderr)
    else:
        at = f"step {state.step}" if hooks.last_step == state.step else (
            f"step {state.step} (its last checkpoint is step {hooks.last_step})")
        print(f"interrupted at {at}; resume with: {ctx.resume_command}", file=sys.stderr)
    sys.exit(stop.exit_code)


def _score_test(text: str | None, model: GPTModel, precision: Precision, settings: InferenceConfig,
                tracker: Tracker | NullTracker, step: int, *, progress: bool) -> dict:
    """`trainer.test`: the test split's loss and perplexity as `gpt2exp.eval` scores them
    (stride min(512, context), the model laid out for scoring by `settings`), logged at the last
    step; {} when off. `model` is laid out in place: nothing trains or saves it after this.
    `progress`: a bar on a terminal."""
    if text is None:
        return {}
    model = _laid_out_for_scoring(model, precision, settings)
    stride = default_stride(model.cfg.context_length)
    score = score_text(model, torch.tensor(get_encoding().encode(text, allowed_special="all")), stride=stride,
                       precision=precision, progress="scoring test" if progress else None)
    metrics = {"test/loss": score.mean_nll, "test/perplexity": score.perplexity}
    tracker.log_metrics(metrics, step=step)
    log.info("test: %s tokens | loss %.4f | perplexity %.3f (stride %d)", f"{score.tokens:,}", score.mean_nll,
             score.perplexity, stride)
    return {**metrics, "test/tokens": score.tokens, "test/stride": stride}


def _laid_out_for_scoring(model: GPTModel, precision: Precision, settings: InferenceConfig) -> GPTModel:
    """`model` laid out for scoring full windows as `gpt2exp.eval` lays out its checkpoint, in
    place. A LoRA model on the CPU is merged first, as eval loads it: a copy, whose plain Linear
    layers take any layout (peft's do not)."""
    if is_lora(model) and model.tok_emb.weight.device.type == "cpu":
        model = merged_model(model)
    return to_inference_layout(model, precision, use="score", settings=settings)


def reuse_trained_model(cfg: TrainConfig, plan: RunPlan, trained: reuse.TrainedModel, ctx: RunContext,
                        tracker: Tracker | NullTracker) -> dict:
    """Another job of this sweep trained this very model: adopt its files into this run and
    only sample with this job's decoding settings; returns the run's summary."""
    log.info("reusing the model trained by job %s (config hash %s, %s)", trained.owner["job"], trained.key,
             trained.owner["run_dir"])
    summary = reuse.adopt(trained, ctx.run_dir, tracker)
    model, checkpoint = load_trained_model(RunLayout.last_checkpoint(ctx.run_dir))
    model = model.to(plan.device)
    sampler = Sampler(cfg.decoding, cfg.trainer.start_context, model, tracker)
    sampler(checkpoint["step"], None, final=True)
    return {**summary, **sampler.metrics}


def _warn_job_batch(checkpoint: dict, batch_size: int, grad_accum: int, processes: int) -> None:
    """Warn when resuming on another number of processes changes the sequences a step takes (this
    run's apply), naming the per-process settings that would keep the checkpoint's."""
    processes_before = checkpoint["extra"].get("world_size", 1)
    trained = checkpoint["config"]
    step_before = trained["data"]["batch_size"] * trained["trainer"].get("grad_accum", 1) * processes_before
    step_now = batch_size * grad_accum * processes
    if processes == processes_before or step_now == step_before:
        return
    keep = [f"{key}={step_before // (step_now // value)}" for key, value in
            (("data.batch_size", batch_size), ("trainer.grad_accum", grad_accum)) if step_before % (step_now // value) == 0]
    log.warning("resuming with the number of processes changed from %d to %d: a step takes %d sequences instead of %d "
                "(this run's apply); %s", processes_before, processes, step_now, step_before,
                f"to keep the job's, set {' or '.join(keep)}" if keep else "no whole per-process batch keeps the job's")


def _load_weights(resume: ResumePoint, model: GPTModel) -> None:
    """The checkpoint's weights (a LoRA run's: its adapter) into the model, before it is wrapped or sharded."""
    if is_lora(model):
        load_adapter(model, resume.checkpoint["model"], f"trainer.resume: '{resume.path}'")
    else:
        model.load_state_dict(resume.checkpoint["model"])


def _restore(cfg: TrainConfig, resume: ResumePoint, optimizer: torch.optim.Optimizer, train_batches: int,
             sharded: Sharded | None) -> TrainState:
    """Load the checkpoint's optimizer state (with this run's optimizer settings; each rank's
    shards when `sharded`); returns its training state, realigned to this run's batches."""
    if resume.checkpoint["optimizer"] is None:
        log.warning("%s holds no optimizer state (trainer.save_optimizer=false): AdamW's moments start afresh",
                    resume.path)
    else:
        configured = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
        if sharded is not None:
            load_optimizer_state(optimizer, resume.checkpoint["optimizer"])
        else:
            optimizer.load_state_dict(resume.checkpoint["optimizer"])
        for group, settings in zip(optimizer.param_groups, configured):  # this run's optimizer.* settings
            group.update(settings, initial_lr=settings["lr"])
    state = TrainState.from_dict(resume.checkpoint["extra"]["train_state"])
    grad_accum, world_size = cfg.trainer.grad_accum, distributed.world().world_size
    # The job's batches (each process's times the processes): a run may resume on another number of them.
    before = resume.checkpoint["config"]["data"]["batch_size"] * resume.checkpoint["extra"].get("world_size", 1)
    _warn_job_batch(resume.checkpoint, cfg.data.batch_size, grad_accum, world_size)
    state.realign(batch_size_before=before, batch_size=cfg.data.batch_size * world_size,
                  grad_accum=grad_accum, batches_per_epoch=train_batches // grad_accum * grad_accum)
    log.info("resuming %s from %s (step %d, epoch %d)", resume.run_dir, resume.path, state.step, state.epoch)
    return state
