"""``python -m gpt2exp.generate ckpt=<checkpoint or run folder> prompt="..."``: sample from a
trained checkpoint, log the samples, the figures that compare decoding settings and the
temperature plot."""

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gpt2exp import cli
from gpt2exp.config import (
    check_decoding,
    check_fits_in_memory,
    check_generate_config,
    check_model,
    register_configs,
)
from gpt2exp.errors import UserError

if TYPE_CHECKING:
    import torch

log = logging.getLogger("gpt2exp.generate")
register_configs()


def checkpoint_file(ckpt: str) -> Path:
    """A checkpoint file as given, or a run folder's ``checkpoints/last.pt``."""
    path = Path(ckpt).expanduser()
    try:
        is_dir = path.is_dir()
    except OSError as err:  # e.g. a name too long for the file system
        raise UserError(f"ckpt: '{ckpt}' cannot be read ({err.strerror})") from None
    if is_dir:
        path = path / "checkpoints" / "last.pt"
        if not path.is_file():
            raise UserError(f"ckpt: run folder '{ckpt}' has no checkpoints/last.pt")
    return path


def wandb_checkpoint(ckpt: str, mode: str) -> Path:
    """The checkpoint file of a W&B model artifact, ``wandb:<entity>/<project>/<name>:<alias>``
    (as `logger.log_model` logs them), downloaded into W&B's artifact cache."""
    from gpt2exp.tracking import resolve_mode

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

    resolved: dict
    ckpt_path: Path
    checkpoint: dict
    model_cfg: dict
    device: "torch.device"


def plan_generation(cfg: DictConfig) -> GenerationPlan:
    """Check everything a user can get wrong (config, checkpoint, decoding against the model)
    before a model is built or a file is written; raises UserError (or a config error)."""
    from gpt2exp.devices import resolve_device

    if OmegaConf.is_missing(cfg, "ckpt"):
        newest = _newest_run(Path("outputs"))
        raise UserError("ckpt is required: ckpt=<checkpoint file or run folder>"
                        + (f"; the newest run here is ckpt={newest}" if newest else ""))
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    check_generate_config(cfg)
    ckpt_path = wandb_checkpoint(cfg.ckpt, cfg.logger.mode) if cfg.ckpt.startswith("wandb:") else (
        checkpoint_file(cfg.ckpt))
    checkpoint, model_cfg = checked_checkpoint(ckpt_path)
    check_decoding(cfg.decoding, model_cfg["vocab_size"])
    return GenerationPlan(resolved, ckpt_path, checkpoint, model_cfg, resolve_device(cfg.device, key="device"))


def checked_checkpoint(ckpt_path: Path) -> tuple[dict, dict]:
    """(checkpoint, its model config) of a checkpoint whose model can be built on this machine
    and whose weights fit that config; raises UserError naming what does not."""
    from gpt2exp.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(ckpt_path)
    model_cfg = checkpoint["config"].get("model") if isinstance(checkpoint["config"], dict) else None
    if not isinstance(model_cfg, dict):
        raise UserError(f"ckpt: '{ckpt_path}' holds no model config")
    try:
        declared = OmegaConf.create(model_cfg)
        check_model(declared)
        check_fits_in_memory(declared)
    except (UserError, OmegaConfBaseException) as err:
        raise UserError(f"ckpt: '{ckpt_path}' declares a model that cannot be built: {cli.one_line(err)}") from None
    _check_weights_fit(model_cfg, checkpoint["model"], ckpt_path)
    return checkpoint, model_cfg


def _newest_run(outputs: Path) -> Path | None:
    """The run folder under `outputs` whose last.pt was written last, if any."""
    runs = []
    for last in outputs.glob("**/checkpoints/last.pt"):
        with contextlib.suppress(OSError):
            runs.append((last.stat().st_mtime, last.parent.parent))
    return max(runs)[1] if runs else None


def _check_weights_fit(model_cfg: dict, weights: dict, ckpt_path: Path) -> None:
    """Compare the weights' names and shapes with the model the config declares, before any
    memory is spent on it (the model is built on the meta device)."""
    import torch

    from gpt2exp.model import GPTConfig, GPTModel

    try:
        with torch.device("meta"):
            expected = GPTModel(GPTConfig(**model_cfg)).state_dict()
    except TypeError as err:
        raise UserError(f"ckpt: '{ckpt_path}' holds a model config this gpt2exp does not know ({err})") from None
    for name in sorted(expected.keys() | weights.keys()):
        if name not in weights or name not in expected or weights[name].shape != expected[name].shape:
            raise UserError(f"ckpt: '{ckpt_path}' holds weights that do not fit its model config (first: {name})")


def generate(cfg: DictConfig) -> None:
    """Sample ``decoding.num_samples`` continuations of ``prompt`` and log them."""
    plan = plan_generation(cfg)
    import torch

    from gpt2exp.decoding import sample_continuations, to_decoding_layout
    from gpt2exp.model import GPTConfig, GPTModel
    from gpt2exp.plots import plot_next_token_probs
    from gpt2exp.text_metrics import generation_metrics
    from gpt2exp.tokenizer import get_encoding
    from gpt2exp.tracking import Tracker

    resolved, ckpt_path, checkpoint, device = plan.resolved, plan.ckpt_path, plan.checkpoint, plan.device
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    model = GPTModel(GPTConfig(**plan.model_cfg))
    model.load_state_dict(checkpoint["model"])  # names and shapes checked by plan_generation
    model = to_decoding_layout(model.to(device).eval())
    context_length = model.cfg.context_length

    encoding = get_encoding()
    prompt_ids = encoding.encode(cfg.prompt, allowed_special="all")
    if len(prompt_ids) > context_length:
        log.warning(
            "prompt: %d tokens; the model sees only the last context_length=%d", len(prompt_ids), context_length
        )
    dec = cfg.decoding
    settings = {key: resolved["decoding"][key]
                for key in ("temperature", "top_k", "top_p", "max_new_tokens", "eos_id", "seed")}
    log.info("checkpoint %s (step %s) on %s | %s", ckpt_path, checkpoint["step"], device, settings)
    num_samples = dec.num_samples
    if dec.temperature == 0 and num_samples > 1:
        log.info("decoding.temperature=0 is greedy: its %d samples would be the same text, so one is made",
                 num_samples)
        num_samples = 1

    with Tracker(run_dir, config=resolved, job_type="generate", **cli.tracker_options(cfg.logger)) as tracker:
        out, seconds = sample_continuations(
            model, prompt_ids, num_samples=num_samples, seed=dec.seed, temperature=dec.temperature,
            max_new_tokens=dec.max_new_tokens, top_k=dec.top_k, top_p=dec.top_p, eos_id=dec.eos_id,
        )
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
            temperature=dec.temperature, top_k=dec.top_k, top_p=dec.top_p, path=run_dir / "next_token_probs.png",
        )
        tracker.log_image("next_token_probs", plot_path, step=0)
    log.info("done: %d sample%s in %s", num_samples, "s" * (num_samples > 1), run_dir)


@hydra.main(config_path=cli.CONFIG_DIR, config_name="generate", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    return cli.reports_user_errors(generate)(cfg)


def main() -> None:
    """The ``gpt2exp-generate`` console command (``python -m gpt2exp.generate``)."""
    cli.run(_hydra_main)


if __name__ == "__main__":
    main()
