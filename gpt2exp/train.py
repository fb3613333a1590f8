"""``python -m gpt2exp.train``: compose a run from config, train, log, checkpoint, resume.

In a multirun, jobs whose training settings are identical (a decoding sweep) share one
trained model: the first trains it, the others reuse it and only sample (see `reuse`).
"""

import contextlib
import json
import logging
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from gpt2exp import cli, reuse, run_folder
from gpt2exp.config import check_fits_in_memory, check_train_config, register_configs
from gpt2exp.errors import AlreadyComplete, UserError

log = logging.getLogger("gpt2exp.train")
register_configs()


@dataclass
class RunPlan:
    """A run whose inputs all checked out: its config, device and precision, data, length and
    resume point."""

    resolved: dict
    device: Any
    precision: Any
    data: Any
    total_steps: int
    resume: Any
    test_text: str | None = None  # the held-out split scored at the end (`trainer.test`)


def plan_run(cfg: DictConfig, run_dir: Path, outputs_root: Path) -> RunPlan:
    """Check everything a user can get wrong (config, resume folder, data, model size) before
    a model is built or a file is written; raises UserError (or a config error) naming the key."""
    from gpt2exp.devices import resolve_device, resolve_precision
    from gpt2exp.resume import find_resume_point

    if cfg.model.init is not None:
        _adopt_hf_architecture(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    check_train_config(cfg)
    check_fits_in_memory(cfg.model)
    device = resolve_device(cfg.trainer.device)
    precision = resolve_precision(cfg.trainer.precision, device)
    own_folder = run_folder.claimed(run_dir)
    # A folder that already holds a run can only be continued: from its own checkpoints.
    resume_from = str(run_dir) if own_folder and own_folder.held_run else cfg.trainer.resume
    resume = find_resume_point(resume_from, resolved, run_dir=run_dir, root=outputs_root)
    data = _load_data(cfg, device)
    grad_accum = cfg.trainer.grad_accum
    steps_per_epoch = len(data.train_loader) // grad_accum
    if steps_per_epoch == 0:
        raise UserError(
            f"trainer.grad_accum={grad_accum} is more than the {len(data.train_loader)} "
            "training batches of an epoch; lower it or data.batch_size"
        )
    total_steps = cfg.trainer.max_steps or cfg.trainer.epochs * steps_per_epoch
    if resume is not None and resume.checkpoint["step"] >= total_steps:
        summary = _read_summary(resume.run_dir)
        raise AlreadyComplete(
            f"run {resume.run_dir} is already complete (step {resume.checkpoint['step']} of {total_steps}); "
            f"its checkpoint: {resume.run_dir / 'checkpoints' / 'last.pt'}; nothing new written",
            result=summary.get("final/val_loss", resume.checkpoint["extra"]["train_state"]["best_val_loss"]),
        )
    return RunPlan(resolved, device, precision, data, total_steps, resume, _test_text(cfg))


def _test_text(cfg: DictConfig) -> str | None:
    """WikiText's test split when `trainer.test` is on (null: on for WikiText when its test split
    can be read, off otherwise)."""
    from gpt2exp.data import load_eval_text

    test, data = cfg.trainer.test, cfg.data
    if test is False or (test is None and data.source != "wikitext"):
        return None
    if data.source != "wikitext":
        raise UserError(f"trainer.test=true needs a test split: data.source={data.source!r} has none (use "
                        "data=wikitext2, or python -m gpt2exp.eval data=text data.path=... on a held-out file)")
    try:
        return load_eval_text(data.source, split="test", name=data.name, local_dir=data.local_dir)
    except UserError as err:
        if test:
            raise
        log.warning("trainer.test: no test split (%s); the run ends without it", err)
        return None


def _adopt_hf_architecture(cfg: DictConfig) -> None:
    """`model.init`: the model's keys become those of the HF folder's config.json (dropout off
    unless `model.drop_rate` was given on the command line), so the run's config records them."""
    from gpt2exp.hf_format import find_hf_folder, model_config, read_config

    folder = find_hf_folder(cfg.model.init)
    given = any(o.lstrip("+~").startswith("model.drop_rate=") for o in HydraConfig.get().overrides.task)
    fields = model_config(read_config(folder), drop_rate=cfg.model.drop_rate if given else 0.0)
    with open_dict(cfg):
        cfg.model.update(fields, init=str(folder.resolve()))


def _read_summary(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def train(cfg: DictConfig) -> float:
    """Train the configured model (or resume it, or reuse the sweep's identical one); returns
    the final validation loss (for sweepers)."""
    import torch
    from tqdm.contrib.logging import logging_redirect_tqdm

    from gpt2exp.tracking import Tracker

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    torch.manual_seed(cfg.seed)
    plan = plan_run(cfg, run_dir, _outputs_root(hydra_cfg, run_dir))
    options = cli.tracker_options(cfg.logger, hydra_cfg)
    wandb_run = plan.resume.checkpoint["extra"].get("wandb", {}) if plan.resume else {}
    if wandb_run.get("run_id"):  # continue that W&B run; offline, its group links the parts too
        options["group"] = options["group"] or wandb_run.get("group") or wandb_run["run_id"]

    with _model_slot(hydra_cfg, plan.resolved, run_dir) as slot, logging_redirect_tqdm(), Tracker(
        run_dir, config=plan.resolved, run_id=wandb_run.get("run_id"), **options
    ) as tracker:
        if slot and slot.trained:
            summary = _reuse_model(cfg, plan, slot.trained, run_dir, tracker)
        else:
            summary = _train_model(cfg, plan, run_dir, tracker, options["group"])
            if slot:
                summary["config_hash"] = slot.key
                slot.publish(checkpoint=run_dir / "checkpoints" / "last.pt", metrics=run_dir / "metrics.jsonl",
                             loss_plot=run_dir / "loss.png", summary=summary)
        tracker.summary(summary)
    return summary["final/val_loss"]


def _fail_run(tracker, message: str) -> None:
    """End the W&B run as failed; a single run exits 1 with `message`, a multirun job fails."""
    tracker.finish(exit_code=1)
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        raise RuntimeError(message)
    cli.fail(message, status=1)


def _resume_command(run_dir: Path) -> str:
    from gpt2exp.resume import resume_command

    return resume_command(list(HydraConfig.get().overrides.task), run_dir)


def _parallel_jobs() -> bool:
    """Whether this is a multirun job that shares the console with others running at once (the
    joblib launcher): their progress bars would overwrite each other, so the eval lines alone
    report progress."""
    hydra_cfg = HydraConfig.get()
    launcher = hydra_cfg.launcher
    parallel = (hydra_cfg.mode == RunMode.MULTIRUN and "joblib" in str(launcher.get("_target_", ""))
                and launcher.get("n_jobs", 1) != 1)
    if parallel and hydra_cfg.job.num == 0:
        log.info("progress bars off: the jobs run in parallel (one line per evaluation instead)")
    return parallel


def _model_slot(hydra_cfg, resolved: dict, run_dir: Path):
    """In a multirun, the sweep's model store entry for this training config; else nothing."""
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return contextlib.nullcontext()
    owner = {"job": hydra_cfg.job.num, "run_dir": str(run_dir)}
    return reuse.claim(Path(hydra_cfg.sweep.dir) / ".trained", reuse.training_key(resolved), owner)


def _train_model(cfg: DictConfig, plan: RunPlan, run_dir: Path, tracker, wandb_group: str | None) -> dict:
    """The tutorial's run (model, AdamW, the loop, the loss plot, checkpoints), from the
    plan's resume point if any. SIGINT/SIGTERM save a checkpoint and exit 130/143 saying how
    to resume; a non-finite loss exits 1 naming the step (a multirun fails that job only)."""
    import torch

    from gpt2exp.checkpoint import format_bytes
    from gpt2exp.data import eval_batches
    from gpt2exp.interrupt import GracefulStop
    from gpt2exp.rng import restore_rng_state
    from gpt2exp.trainer import NonFiniteLoss, TrainState, lr_multiplier, train_model

    trainer_cfg, opt_cfg, data, total_steps = cfg.trainer, cfg.optimizer, plan.data, plan.total_steps
    model, optimizer = _build_model(cfg, plan.resolved, plan.device)
    if plan.resume is None and cfg.model.init is not None:
        from gpt2exp.hf_format import load_hf_weights

        model.load_state_dict(load_hf_weights(Path(cfg.model.init), model.cfg))
        log.info("model.init: weights from %s", cfg.model.init)
    log.info(
        "model %s parameters on %s (%s) | data %s: %d train / %d val tokens | %d steps | run folder %s",
        f"{model.num_parameters():,}", plan.device, plan.precision.name, cfg.data.source, data.train_tokens,
        data.val_tokens, total_steps, run_dir,
    )
    # Shares model's weights; static shapes, so that eval's batches add graphs of their own
    # instead of recompiling the training graph for dynamic shapes.
    train_forward = torch.compile(model, dynamic=False) if trainer_cfg.compile else model
    state = TrainState()
    if plan.resume is not None:
        state = _restore(cfg, plan.resume, model, optimizer, data.train_loader)
        tracker.carry_over(plan.resume.run_dir, state.step)
    hooks = RunHooks(cfg, plan.resolved, model, optimizer, tracker, run_dir, wandb_group, resumed_from=plan.resume)
    sampler = Sampler(cfg, plan.resolved, model, tracker, plan.device, total_steps)
    with GracefulStop() as stop:
        if plan.resume is not None:
            restore_rng_state(plan.resume.checkpoint["extra"]["rng"])
        try:
            state = train_model(
                train_forward, optimizer, data.train_loader,
                train_eval_batches=eval_batches(data.train_loader.dataset, num_batches=trainer_cfg.eval_iter,
                                                batch_size=cfg.data.batch_size),
                val_eval_batches=eval_batches(data.val_loader.dataset, num_batches=trainer_cfg.eval_iter,
                                              batch_size=cfg.data.batch_size),
                device=plan.device,
                total_steps=total_steps,
                eval_freq=trainer_cfg.eval_freq,
                state=state,
                grad_accum=trainer_cfg.grad_accum,
                grad_clip=trainer_cfg.grad_clip,
                skip_nonfinite=trainer_cfg.skip_nonfinite,
                lr_at=lambda step: lr_multiplier(
                    step, total_steps=total_steps, warmup_steps=opt_cfg.warmup_steps,
                    schedule=opt_cfg.schedule, min_lr_ratio=opt_cfg.min_lr_ratio,
                ),
                sample_freq=trainer_cfg.sample_freq,
                checkpoint_freq=trainer_cfg.checkpoint_freq,
                checkpoint_minutes=trainer_cfg.checkpoint_minutes,
                on_eval=hooks.on_eval,
                on_step=hooks.on_step,
                on_sample=sampler,
                on_checkpoint=stop.shielded(hooks.on_checkpoint),
                should_stop=stop.requested,
                progress=trainer_cfg.progress and not _parallel_jobs(),
                precision=plan.precision,
            )
        except NonFiniteLoss as err:
            _fail_run(tracker, f"{err}; last good checkpoint: {hooks.last_checkpoint or 'none yet'}; lower "
                      "optimizer.lr, or set trainer.skip_nonfinite=true to skip such steps")
        except KeyboardInterrupt:  # a second signal: stop now, from the last checkpoint written
            stop.signum = stop.signum or signal.SIGINT
        except OSError as err:
            if not err.filename:
                raise
            _fail_run(tracker, f"cannot write {err.filename} ({err.strerror}); the last good checkpoint is "
                      f"{hooks.last_checkpoint or 'none yet'}; resume with: {_resume_command(run_dir)}")
    if stop.requested():
        tracker.finish(exit_code=stop.exit_code)
        if hooks.last_step is None:
            print(f"interrupted at step {state.step}, before the run's first checkpoint: nothing to resume",
                  file=sys.stderr)
        else:
            at = f"step {state.step}" if hooks.last_step == state.step else (
                f"step {state.step} (its last checkpoint is step {hooks.last_step})")
            print(f"interrupted at {at}; resume with: {_resume_command(run_dir)}", file=sys.stderr)
        sys.exit(stop.exit_code)
    hooks.plot(state)
    hooks.log_models(state)
    final = state.final
    test = _score_test(plan.test_text, model, plan.precision, tracker, state.step)
    checkpoint_bytes = hooks.checkpoint_bytes()
    log.info("done: val loss %.3f (first %.3f) | checkpoint %s | checkpoints take %s", final.val_loss,
             state.history[0].val_loss, hooks.last_checkpoint, format_bytes(checkpoint_bytes))
    return {
        "final/train_loss": final.train_loss,
        "final/val_loss": final.val_loss,
        "final/val_perplexity": _perplexity(final.val_loss),
        "best/val_loss": state.best_val_loss,
        "steps": state.step,
        "tokens_seen": state.tokens_seen,
        "skipped_nonfinite": state.skipped_nonfinite,
        "checkpoint_bytes": checkpoint_bytes,
        **sampler.metrics,
        **test,
    }


def _score_test(text: str | None, model, precision, tracker, step: int) -> dict:
    """`trainer.test`: the test split's loss and perplexity as `gpt2exp.eval` scores them
    (stride min(512, context)), logged at the last step; {} when off."""
    if text is None:
        return {}
    import torch

    from gpt2exp.perplexity import score_text
    from gpt2exp.tokenizer import get_encoding

    stride = min(512, model.cfg.context_length)
    score = score_text(model, torch.tensor(get_encoding().encode(text, allowed_special="all")), stride=stride,
                       precision=precision)
    metrics = {"test/loss": score.mean_nll, "test/perplexity": score.perplexity}
    tracker.log_metrics(metrics, step=step)
    log.info("test: %s tokens | loss %.4f | perplexity %.3f (stride %d)", f"{score.tokens:,}", score.mean_nll,
             score.perplexity, stride)
    return {**metrics, "test/tokens": score.tokens, "test/stride": stride}


class RunHooks:
    """What the training loop calls back into besides sampling: eval logging, checkpoints,
    and the loss plot at the end."""

    def __init__(self, cfg, resolved, model, optimizer, tracker, run_dir: Path, wandb_group: str | None,
                 resumed_from=None):
        self.cfg, self.resolved, self.model, self.optimizer, self.tracker = cfg, resolved, model, optimizer, tracker
        self.run_dir, self.wandb_group = run_dir, wandb_group
        self.last_checkpoint = resumed_from.path if resumed_from else None
        self.last_step = resumed_from.checkpoint["step"] if resumed_from else None
        self.checkpoint_dir = run_dir / "checkpoints"
        self.started, self.stepped = time.perf_counter(), False

    def on_step(self, step: int, metrics: dict) -> None:
        self.tracker.log_metrics(metrics, step=step)
        if not self.stepped:
            self.stepped = True
            log.info("first step done %.1f s after training started (any first evaluation%s included)",
                     time.perf_counter() - self.started, " and compiling" if self.cfg.trainer.compile else "")

    def on_eval(self, point, extra) -> None:
        metrics = {
            "train/loss": point.train_loss,
            "val/loss": point.val_loss,
            "train/perplexity": _perplexity(point.train_loss),
            "val/perplexity": _perplexity(point.val_loss),
            "tokens_seen": point.tokens_seen,
            "epoch": point.epoch,
            **extra,
        }
        self.tracker.log_metrics(metrics, step=point.step)
        log.info(
            "step %5d | epoch %.2f | train loss %.3f ppl %.1f | val loss %.3f ppl %.1f | %s tokens | %.0f tok/s",
            point.step, point.epoch, point.train_loss, metrics["train/perplexity"], point.val_loss,
            metrics["val/perplexity"], f"{point.tokens_seen:,}", extra["tokens_per_sec"],
        )

    def on_checkpoint(self, state, *, periodic: bool, is_best: bool) -> None:
        """`checkpoints/step-<step>.pt` (and last.pt) when periodic, with AdamW's state unless
        `trainer.save_optimizer=false`; best.pt, weights only, on a new best val loss."""
        from gpt2exp.checkpoint import save_checkpoint, save_step_checkpoint
        from gpt2exp.rng import capture_rng_state

        trainer_cfg = self.cfg.trainer
        payload = {
            "model_state": self.model.state_dict(),
            "config": self.resolved,
            "extra": {
                "train_state": state.to_dict(),
                "rng": capture_rng_state(),
                "wandb": {"run_id": self.tracker.run_id, "group": self.wandb_group},
            },
        }
        if periodic:
            optimizer_state = self.optimizer.state_dict() if trainer_cfg.save_optimizer else None
            self.last_checkpoint = save_step_checkpoint(
                self.checkpoint_dir, step=state.step, keep_last=trainer_cfg.keep_last,
                optimizer_state=optimizer_state, **payload,
            )
            self.last_step = state.step
        if is_best and trainer_cfg.keep_best:
            save_checkpoint(self.checkpoint_dir / "best.pt", step=state.step, optimizer_state=None, **payload)

    def log_models(self, state) -> None:
        """`logger.log_model`: best (best.pt, alias "best"), last (the final checkpoint, alias
        "latest") or all (both) as versions of the run's W&B model artifact."""
        choice = str(self.cfg.logger.log_model).lower()
        best = self.checkpoint_dir / "best.pt"
        if choice in ("best", "all") and best.is_file():
            best_step = min(state.history, key=lambda point: point.val_loss)
            self.tracker.log_model(best, aliases=["best"], metadata={"step": best_step.step,
                                                                     "val_loss": best_step.val_loss})
        if choice in ("last", "all") and self.last_checkpoint is not None:
            self.tracker.log_model(self.last_checkpoint, aliases=["latest"],
                                   metadata={"step": state.step, "val_loss": state.final.val_loss})

    def checkpoint_bytes(self) -> int:
        from gpt2exp.checkpoint import folder_bytes

        return folder_bytes(self.checkpoint_dir)

    def plot(self, state) -> None:
        """The loss plot over the whole run (a resumed one included)."""
        from gpt2exp.plots import plot_losses

        history = state.history
        plot_path = plot_losses(
            [p.epoch for p in history], [p.tokens_seen for p in history],
            [p.train_loss for p in history], [p.val_loss for p in history], self.run_dir / "loss.png",
        )
        self.tracker.log_image("loss_plot", plot_path)


def _reuse_model(cfg: DictConfig, plan: RunPlan, trained, run_dir: Path, tracker) -> dict:
    """Another job of this sweep trained this very model: adopt its files into this run and
    only sample with this job's decoding settings."""
    from gpt2exp.checkpoint import load_checkpoint
    from gpt2exp.model import GPTConfig, GPTModel

    log.info("reusing the model trained by job %s (config hash %s, %s)", trained.owner["job"], trained.key,
             trained.owner["run_dir"])
    summary = reuse.adopt(trained, run_dir, tracker)
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.pt", map_location=plan.device)
    model = GPTModel(GPTConfig(**plan.resolved["model"])).to(plan.device)
    model.load_state_dict(checkpoint["model"])
    sampler = Sampler(cfg, plan.resolved, model, tracker, plan.device)
    sampler(checkpoint["step"], None, final=True)
    return {**summary, **sampler.metrics}


class Sampler:
    """``on_sample(step, epoch)``: a sample from `trainer.start_context` with the run's decoding.
    The final one (at `total_steps`, or with ``final=True``) draws `decoding.num_samples` (one
    when greedy) and scores them with generate's gen/* figures, logged and kept in `metrics`."""

    def __init__(self, cfg: DictConfig, resolved: dict, model, tracker, device, total_steps: int | None = None):
        from gpt2exp.tokenizer import get_encoding

        self.dec, self.start_context = cfg.decoding, cfg.trainer.start_context
        self.model, self.tracker, self.device, self.total_steps = model, tracker, device, total_steps
        self.encoding = get_encoding()
        self.prompt_ids = self.encoding.encode(self.start_context, allowed_special="all")
        self.settings = {k: resolved["decoding"][k]
                         for k in ("temperature", "top_k", "top_p", "max_new_tokens", "eos_id")}
        self.metrics: dict = {}

    def __call__(self, step: int, epoch: int | None, final: bool = False) -> None:
        from gpt2exp.decoding import sample_continuations
        from gpt2exp.text_metrics import generation_metrics

        dec = self.dec
        final = final or step == self.total_steps
        out, seconds = sample_continuations(
            self.model, self.prompt_ids, num_samples=dec.num_samples if final else 1, seed=dec.seed,
            temperature=dec.temperature, max_new_tokens=dec.max_new_tokens, top_k=dec.top_k, top_p=dec.top_p,
            eos_id=dec.eos_id,
        )
        count = len(out.token_ids)
        for i, token_ids in enumerate(out.token_ids):
            text = self.encoding.decode(token_ids)
            settings = {**self.settings, "sample": i} if count > 1 else self.settings
            self.tracker.log_sample(step=step, prompt=self.start_context, text=text, settings=settings)
            log.info("sample%s @ step %d%s: %s", f" {i}" if count > 1 else "", step,
                     "" if epoch is None else f" (epoch {epoch})", text.replace("\n", " "))
        if final:
            self.metrics = generation_metrics(out.new_tokens, out.logprobs, seconds)
            self.tracker.log_metrics(self.metrics, step=step)
            log.info(" | ".join(f"{key} {value:.4g}" for key, value in self.metrics.items()))


def _restore(cfg: DictConfig, resume, model, optimizer, train_loader):
    """Load the checkpoint's model and optimizer (with this run's optimizer settings); returns
    its training state, realigned to this run's batches."""
    from gpt2exp.trainer import TrainState

    model.load_state_dict(resume.checkpoint["model"])
    if resume.checkpoint["optimizer"] is None:
        log.warning("%s holds no optimizer state (trainer.save_optimizer=false): AdamW's moments start afresh",
                    resume.path)
    else:
        configured = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
        optimizer.load_state_dict(resume.checkpoint["optimizer"])
        for group, settings in zip(optimizer.param_groups, configured):  # this run's optimizer.* settings
            group.update(settings, initial_lr=settings["lr"])
    state = TrainState.from_dict(resume.checkpoint["extra"]["train_state"])
    state.realign(batch_size_before=resume.checkpoint["config"]["data"]["batch_size"], batch_size=cfg.data.batch_size,
                  grad_accum=cfg.trainer.grad_accum,
                  batches_per_epoch=len(train_loader) // cfg.trainer.grad_accum * cfg.trainer.grad_accum)
    log.info("resuming %s from %s (step %d, epoch %d)", resume.run_dir, resume.path, state.step, state.epoch)
    return state


def _load_data(cfg: DictConfig, device):
    from gpt2exp.data import build_data

    data_cfg = cfg.data
    return build_data(
        source=data_cfg.source,
        path=data_cfg.path,
        name=data_cfg.name,
        local_dir=data_cfg.local_dir,
        train_ratio=data_cfg.train_ratio,
        batch_size=data_cfg.batch_size,
        context_length=cfg.model.context_length,
        stride=data_cfg.stride,
        cache_dir=Path(data_cfg.cache_dir).expanduser(),
        shuffle=data_cfg.shuffle,
        drop_last=data_cfg.drop_last,
        num_workers=data_cfg.num_workers,
        seed=cfg.seed,
        sampler=data_cfg.sampler,
        pin_memory=device.type == "cuda",
    )


def _build_model(cfg: DictConfig, resolved: dict, device):
    from gpt2exp.model import GPTConfig, GPTModel
    from gpt2exp.trainer import make_optimizer

    model = GPTModel(GPTConfig(**resolved["model"]),
                     activation_checkpointing=cfg.trainer.activation_checkpointing).to(device)
    opt_cfg = cfg.optimizer
    optimizer = make_optimizer(
        model, lr=opt_cfg.lr, weight_decay=opt_cfg.weight_decay, betas=opt_cfg.betas, eps=opt_cfg.eps,
        weight_decay_on=opt_cfg.weight_decay_on,
    )
    return model, optimizer


def _outputs_root(hydra_cfg, run_dir: Path) -> Path:
    """Where `trainer.resume=auto` looks for earlier runs: the fixed part of the run-dir pattern."""
    from gpt2exp.resume import outputs_root

    section = hydra_cfg.sweep if hydra_cfg.mode == RunMode.MULTIRUN else hydra_cfg.run
    return outputs_root(OmegaConf.to_container(section, resolve=False)["dir"], run_dir, Path(hydra_cfg.runtime.cwd))


def _perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))


@hydra.main(config_path=cli.CONFIG_DIR, config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float:
    return cli.reports_user_errors(train)(cfg)


def main() -> None:
    """The ``gpt2exp-train`` console command (``python -m gpt2exp.train``)."""
    cli.run(_hydra_main)


if __name__ == "__main__":
    main()
