"""``python -m gpt2exp.generate ckpt=<checkpoint or run folder> prompt="..."``: sample from a
trained checkpoint, log the samples, the figures that compare decoding settings and the
temperature plot."""

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from gpt2exp.cli import entrypoint as cli
from gpt2exp.config import GenerateConfig, plain
from gpt2exp.devices import resolve_device
from gpt2exp.errors import UserError
from gpt2exp.runs.layout import LAST_CHECKPOINT, RunLayout, checkpoint_file
from gpt2exp.runs.plots import plot_next_token_probs
from gpt2exp.runs.tracking import Tracker
from gpt2exp.runs.trackers.wandb_run import resolve_mode
from gpt2exp.tokenizer import get_encoding

if TYPE_CHECKING:
    import torch

    from gpt2exp.modeling.model import GPTModel

log = logging.getLogger("gpt2exp.generate")


def wandb_checkpoint(ckpt: str, mode: str) -> Path:
    """The checkpoint file of a W&B model artifact, ``wandb:<entity>/<project>/<name>:<alias>``
    (as `logger.log_model` logs them), downloaded into W&B's artifact cache."""
    name = ckpt.removeprefix("wandb:")
    if resolve_mode(mode) != "online":
        raise UserError(f"ckpt={ckpt}: W&B is not reachable from here (logging offline); run "
                        f"`wandb artifact get {name}` where it is, then pass the file as ckpt=<file>")
    import wandb

    try:
        folder = Path(wandb.Api().artifact(name, type="model").download())
    except (wandb.errors.Error, ValueError) as err:
        raise UserError(f"ckpt={ckpt}: {cli.one_line(err)}") from None
    files = sorted(folder.glob("*.pt"))
    if len(files) != 1:
        raise UserError(f"ckpt={ckpt}: the artifact holds {len(files)} .pt files, not one")
    return files[0]


@dataclass
class GenerationPlan:
    """What a generate run needs once every check has passed."""

    cfg: GenerateConfig
    ckpt_path: Path
    checkpoint: dict
    model: "GPTModel"
    device: "torch.device"


def plan_generation(composed: DictConfig) -> GenerationPlan:
    """Check everything a user can get wrong (config, checkpoint, decoding against the model)
    before a file is written; raises UserError (or a config error)."""
    from gpt2exp.modeling.trained import load_trained_model

    if OmegaConf.is_missing(composed, "ckpt"):
        newest = _newest_run(Path("outputs"))
        raise UserError("ckpt is required: ckpt=<checkpoint file or run folder>"
                        + (f"; the newest run here is ckpt={newest}" if newest else ""))
    cfg = cli.typed(composed, GenerateConfig)
    ckpt_path = wandb_checkpoint(cfg.ckpt, cfg.logger.mode) if cfg.ckpt.startswith("wandb:") else (
        checkpoint_file(cfg.ckpt))
    model, checkpoint = load_trained_model(ckpt_path)
    cfg.decoding.check_vocab(model.cfg.vocab_size)
    return GenerationPlan(cfg, ckpt_path, checkpoint, model, resolve_device(cfg.device, key="device"))


def _newest_run(outputs: Path) -> Path | None:
    """The run folder under `outputs` whose last.pt was written last, if any."""
    runs = []
    for last in outputs.glob(f"**/{RunLayout.CHECKPOINTS}/{LAST_CHECKPOINT}"):
        with contextlib.suppress(OSError):
            runs.append((last.stat().st_mtime, last.parent.parent))
    return max(runs)[1] if runs else None


def generate_samples(composed: DictConfig) -> None:
    """Sample ``decoding.num_samples`` continuations of ``prompt`` and log them."""
    plan = plan_generation(composed)
    import torch

    from gpt2exp.modeling.decoding import sample_continuations
    from gpt2exp.modeling.inference_layout import to_inference_layout
    from gpt2exp.modeling.text_metrics import generation_metrics

    cfg, device, dec = plan.cfg, plan.device, plan.cfg.decoding
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    model = to_inference_layout(plan.model.to(device).eval())
    context_length = model.cfg.context_length

    encoding = get_encoding()
    prompt_ids = encoding.encode(cfg.prompt, allowed_special="all")
    if len(prompt_ids) > context_length:
        log.warning(
            "prompt: %d tokens; the model sees only the last context_length=%d", len(prompt_ids), context_length
        )
    settings = dec.settings()
    log.info("checkpoint %s (step %s) on %s | %s", plan.ckpt_path, plan.checkpoint["step"], device, settings)
    if dec.greedy and dec.num_samples > 1:
        log.info("decoding.temperature=0 is greedy: its %d samples would be the same text, so one is made",
                 dec.num_samples)

    with Tracker(run_dir, config=plain(cfg), job_type="generate", **cli.tracker_options(cfg.logger)) as tracker:
        out, seconds = sample_continuations(model, prompt_ids, dec)
        for i, token_ids in enumerate(out.token_ids):
            text = encoding.decode(token_ids)
            tracker.log_sample(step=0, prompt=cfg.prompt, text=text, settings={**settings, "sample": i})
            log.info("sample %d: %s", i, text)

        metrics = generation_metrics(out.new_tokens, out.logprobs, seconds)
        tracker.log_metrics(metrics, step=0)
        tracker.summary(metrics)
        log.info(" | ".join(f"{key} {value:.4g}" for key, value in metrics.items()))

        with torch.inference_mode():
            logits = model(torch.tensor([prompt_ids[-context_length:]], device=device))[0, -1].float().cpu()
        plot_path = plot_next_token_probs(
            logits, label=lambda token_id: repr(encoding.decode([token_id])), temperatures=list(cfg.plot_temperatures),
            temperature=dec.temperature, top_k=dec.top_k, top_p=dec.top_p, path=run_dir / RunLayout.NEXT_TOKEN_PLOT,
        )
        tracker.log_image("next_token_probs", plot_path, step=0)
    count = len(out.token_ids)
    log.info("done: %d sample%s in %s", count, "s" * (count > 1), run_dir)


main = cli.hydra_command("generate", generate_samples)


if __name__ == "__main__":
    main()
