"""``python -m gpt2exp.train``: compose a run from config, train, log, checkpoint."""

import logging
import math
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from gpt2exp import cli
from gpt2exp.config import check_train_config, register_configs
from gpt2exp.errors import UserError

log = logging.getLogger("gpt2exp.train")
register_configs()


def _tracker_options(logger_cfg: DictConfig) -> dict:
    return {
        "backend": logger_cfg.backend,
        "mode": logger_cfg.mode,
        "project": logger_cfg.project,
        "entity": logger_cfg.entity,
        "group": logger_cfg.group,
        "tags": list(logger_cfg.tags),
        "name": logger_cfg.name,
    }


def train(cfg: DictConfig) -> float:
    """Train the configured model; returns the final validation loss (for sweepers)."""
    import torch
    from tqdm.contrib.logging import logging_redirect_tqdm

    from gpt2exp.checkpoint import save_checkpoint
    from gpt2exp.data import build_data, eval_batches
    from gpt2exp.decoding import generate
    from gpt2exp.model import GPTConfig, GPTModel
    from gpt2exp.plots import plot_losses
    from gpt2exp.tokenizer import get_encoding
    from gpt2exp.tracking import Tracker
    from gpt2exp.trainer import lr_multiplier, make_optimizer, resolve_device, train_model

    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    check_train_config(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    trainer_cfg, data_cfg, dec = cfg.trainer, cfg.data, cfg.decoding

    torch.manual_seed(cfg.seed)
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

    encoding = get_encoding()
    prompt_ids = torch.tensor([encoding.encode(trainer_cfg.start_context)], device=device)
    decoding_settings = {k: resolved["decoding"][k] for k in ("temperature", "top_k", "top_p", "max_new_tokens")}
    history: list = []

    with Tracker(run_dir, config=resolved, **_tracker_options(cfg.logger)) as tracker, logging_redirect_tqdm():

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

        def on_sample(step, epoch):
            generator = torch.Generator(device=device).manual_seed(dec.seed)
            out = generate(
                model, prompt_ids, max_new_tokens=dec.max_new_tokens, temperature=dec.temperature,
                top_k=dec.top_k, top_p=dec.top_p, eos_id=dec.eos_id, generator=generator,
            )
            text = encoding.decode(out[0].tolist())
            tracker.log_sample(step=step, prompt=trainer_cfg.start_context, text=text, settings=decoding_settings)
            log.info("sample @ step %d (epoch %d): %s", step, epoch, text.replace("\n", " "))

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
            on_sample=on_sample,
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
        tracker.summary({
            "final/train_loss": final.train_loss,
            "final/val_loss": final.val_loss,
            "final/val_perplexity": _perplexity(final.val_loss),
            "steps": result.steps,
            "tokens_seen": result.tokens_seen,
        })
    log.info("done: val loss %.3f (first %.3f) | checkpoint %s", final.val_loss, history[0].val_loss, checkpoint_path)
    return final.val_loss


def _perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float:
    return cli.reports_user_errors(train)(cfg)


if __name__ == "__main__":
    cli.run(_hydra_main)
