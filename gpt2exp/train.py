"""``python -m gpt2exp.train``: compose a run from config, train, log, checkpoint.

In a multirun, jobs whose training settings are identical (a decoding sweep) share one
trained model: the first trains it, the others reuse it and only sample (see `reuse`).
"""

import contextlib
import logging
import math
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gpt2exp import cli, reuse
from gpt2exp.config import check_train_config, register_configs
from gpt2exp.errors import UserError

log = logging.getLogger("gpt2exp.train")
register_configs()


def train(cfg: DictConfig) -> float:
    """Train the configured model (or reuse the sweep's identical one); returns the final
    validation loss (for sweepers)."""
    import torch
    from tqdm.contrib.logging import logging_redirect_tqdm

    from gpt2exp.tracking import Tracker

    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    check_train_config(cfg)
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    torch.manual_seed(cfg.seed)

    with _model_slot(hydra_cfg, resolved, run_dir) as slot, logging_redirect_tqdm(), Tracker(
        run_dir, config=resolved, **cli.tracker_options(cfg.logger, hydra_cfg)
    ) as tracker:
        if slot and slot.trained:
            summary = _reuse_model(cfg, resolved, slot.trained, run_dir, tracker)
        else:
            summary = _train_model(cfg, resolved, run_dir, tracker)
            if slot:
                summary["config_hash"] = slot.key
                slot.publish(checkpoint=run_dir / "checkpoints" / "last.pt", metrics=run_dir / "metrics.jsonl",
                             loss_plot=run_dir / "loss.png", summary=summary)
        tracker.summary(summary)
    return summary["final/val_loss"]


def _model_slot(hydra_cfg, resolved: dict, run_dir: Path):
    """In a multirun, the sweep's model store entry for this training config; else nothing."""
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return contextlib.nullcontext()
    owner = {"job": hydra_cfg.job.num, "run_dir": str(run_dir)}
    return reuse.claim(Path(hydra_cfg.sweep.dir) / ".trained", reuse.training_key(resolved), owner)


def _train_model(cfg: DictConfig, resolved: dict, run_dir: Path, tracker) -> dict:
    """The tutorial's run: data, model, AdamW, the loop, the loss plot and the checkpoint."""
    from gpt2exp.checkpoint import save_checkpoint
    from gpt2exp.data import build_data, eval_batches
    from gpt2exp.model import GPTConfig, GPTModel
    from gpt2exp.plots import plot_losses
    from gpt2exp.trainer import lr_multiplier, make_optimizer, resolve_device, train_model

    trainer_cfg, data_cfg = cfg.trainer, cfg.data
    device = resolve_device(trainer_cfg.device)
    data = build_data(
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
    )
    steps_per_epoch = len(data.train_loader) // trainer_cfg.grad_accum
    if steps_per_epoch == 0:
        raise UserError(
            f"trainer.grad_accum={trainer_cfg.grad_accum} is more than the {len(data.train_loader)} "
            "training batches of an epoch; lower it or data.batch_size"
        )
    total_steps = trainer_cfg.max_steps or trainer_cfg.epochs * steps_per_epoch

    model = GPTModel(GPTConfig(**resolved["model"])).to(device)
    opt_cfg = cfg.optimizer
    optimizer = make_optimizer(
        model, lr=opt_cfg.lr, weight_decay=opt_cfg.weight_decay, betas=opt_cfg.betas, eps=opt_cfg.eps
    )
    log.info(
        "model %s parameters on %s | data %s: %d train / %d val tokens | %d steps | run folder %s",
        f"{model.num_parameters():,}", device, data_cfg.source, data.train_tokens, data.val_tokens,
        total_steps, run_dir,
    )
    history: list = []

    def on_eval(point, extra):
        history.append(point)
        metrics = {
            "train/loss": point.train_loss,
            "val/loss": point.val_loss,
            "train/perplexity": _perplexity(point.train_loss),
            "val/perplexity": _perplexity(point.val_loss),
            "tokens_seen": point.tokens_seen,
            "epoch": point.epoch,
            **extra,
        }
        tracker.log_metrics(metrics, step=point.step)
        log.info(
            "step %5d | epoch %.2f | train loss %.3f ppl %.1f | val loss %.3f ppl %.1f | %s tokens | %.0f tok/s",
            point.step, point.epoch, point.train_loss, metrics["train/perplexity"], point.val_loss,
            metrics["val/perplexity"], f"{point.tokens_seen:,}", extra["tokens_per_sec"],
        )

    result = train_model(
        model,
        optimizer,
        data.train_loader,
        train_eval_batches=eval_batches(data.train_loader.dataset, num_batches=trainer_cfg.eval_iter,
                                        batch_size=data_cfg.batch_size),
        val_eval_batches=eval_batches(data.val_loader.dataset, num_batches=trainer_cfg.eval_iter,
                                      batch_size=data_cfg.batch_size),
        device=device,
        total_steps=total_steps,
        eval_freq=trainer_cfg.eval_freq,
        grad_accum=trainer_cfg.grad_accum,
        grad_clip=trainer_cfg.grad_clip,
        lr_at=lambda step: lr_multiplier(
            step, total_steps=total_steps, warmup_steps=opt_cfg.warmup_steps,
            schedule=opt_cfg.schedule, min_lr_ratio=opt_cfg.min_lr_ratio,
        ),
        sample_freq=trainer_cfg.sample_freq,
        on_eval=on_eval,
        on_step=lambda step, metrics: tracker.log_metrics(metrics, step=step),
        on_sample=_sampler(cfg, resolved, model, tracker, device),
        progress=trainer_cfg.progress,
    )

    plot_path = plot_losses(
        [p.epoch for p in history], [p.tokens_seen for p in history],
        [p.train_loss for p in history], [p.val_loss for p in history], run_dir / "loss.png",
    )
    tracker.log_image("loss_plot", plot_path)
    checkpoint_path = save_checkpoint(
        run_dir / "checkpoints" / "last.pt",
        model_state=model.state_dict(),
        optimizer_state=optimizer.state_dict(),
        step=result.steps,
        config=resolved,
        extra={"tokens_seen": result.tokens_seen},
    )
    final = result.final
    log.info("done: val loss %.3f (first %.3f) | checkpoint %s", final.val_loss, history[0].val_loss, checkpoint_path)
    return {
        "final/train_loss": final.train_loss,
        "final/val_loss": final.val_loss,
        "final/val_perplexity": _perplexity(final.val_loss),
        "steps": result.steps,
        "tokens_seen": result.tokens_seen,
    }


def _reuse_model(cfg: DictConfig, resolved: dict, trained, run_dir: Path, tracker) -> dict:
    """Another job of this sweep trained this very model: adopt its files into this run and
    only sample with this job's decoding settings."""
    from gpt2exp.checkpoint import load_checkpoint
    from gpt2exp.model import GPTConfig, GPTModel
    from gpt2exp.trainer import resolve_device

    log.info("reusing the model trained by job %s (config hash %s, %s)", trained.owner["job"], trained.key,
             trained.owner["run_dir"])
    summary = reuse.adopt(trained, run_dir, tracker)
    device = resolve_device(cfg.trainer.device)
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.pt", map_location=device)
    model = GPTModel(GPTConfig(**resolved["model"])).to(device)
    model.load_state_dict(checkpoint["model"])
    _sampler(cfg, resolved, model, tracker, device)(checkpoint["step"], None)
    return summary


def _sampler(cfg: DictConfig, resolved: dict, model, tracker, device):
    """`on_sample(step, epoch)`: one sample from `trainer.start_context` with the run's decoding."""
    import torch

    from gpt2exp.decoding import generate
    from gpt2exp.tokenizer import get_encoding

    dec, start_context = cfg.decoding, cfg.trainer.start_context
    encoding = get_encoding()
    prompt_ids = torch.tensor([encoding.encode(start_context)], device=device)
    settings = {k: resolved["decoding"][k] for k in ("temperature", "top_k", "top_p", "max_new_tokens")}

    def on_sample(step, epoch):
        generator = torch.Generator(device=device).manual_seed(dec.seed)
        out = generate(
            model, prompt_ids, max_new_tokens=dec.max_new_tokens, temperature=dec.temperature,
            top_k=dec.top_k, top_p=dec.top_p, eos_id=dec.eos_id, generator=generator,
        )
        text = encoding.decode(out[0].tolist())
        tracker.log_sample(step=step, prompt=start_context, text=text, settings=settings)
        log.info("sample @ step %d%s: %s", step, "" if epoch is None else f" (epoch {epoch})",
                 text.replace("\n", " "))

    return on_sample


def _perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float:
    return cli.reports_user_errors(train)(cfg)


if __name__ == "__main__":
    cli.run(_hydra_main)
