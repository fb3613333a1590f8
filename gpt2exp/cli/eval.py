"""``python -m gpt2exp.eval ckpt=<checkpoint file or run folder> [data=wikitext2]``: held-out
perplexity the standard way (sliding windows, each token scored once) of a trained checkpoint,
or of a Hugging Face GPT-2 folder (``model.init=<folder>``); prints it and writes ``eval.json``.
With ``eval.tasks=[hellaswag,...]`` it runs lm-evaluation-harness tasks instead (`ckpt` may then
also name a Hugging Face folder or gpt2 model)."""

import logging
import math
from pathlib import Path
from typing import cast

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from gpt2exp import collector
from gpt2exp.atomic import write_json_atomic
from gpt2exp.cli import entrypoint as cli
from gpt2exp.config import EvalConfig, plain
from gpt2exp.devices import resolve_device, resolve_precision
from gpt2exp.errors import UserError
from gpt2exp.runs.layout import RunLayout
from gpt2exp.runs.tracking import Tracker
from gpt2exp.tokenizer import get_encoding

log = logging.getLogger("gpt2exp.eval")


def load_model(cfg: EvalConfig):
    """The model to score (on the CPU): the checkpoint's, or the Hugging Face folder's."""
    from gpt2exp.modeling.hf_format import find_hf_folder, read_hf_folder
    from gpt2exp.modeling.model import GPTModel
    from gpt2exp.modeling.trained import load_trained_model
    from gpt2exp.runs.layout import checkpoint_file

    if cfg.ckpt is not None and not _names_hf_model(cfg.ckpt):
        return load_trained_model(checkpoint_file(cfg.ckpt))[0]
    hf_model = cast(str, cfg.ckpt or cfg.model.init)  # EvalConfig: ckpt or model.init
    model_cfg, weights = read_hf_folder(find_hf_folder(hf_model), drop_rate=0.0)
    model = GPTModel.unfilled(model_cfg, "cpu")
    model.load_state_dict(weights)
    return model


def _names_hf_model(ckpt: str) -> bool:
    """Whether `ckpt` names a Hugging Face folder (config.json, no gpt2exp checkpoint) or an OpenAI model."""
    from gpt2exp.modeling.hf_format import OPENAI_MODELS

    path = Path(ckpt).expanduser()
    return ckpt in OPENAI_MODELS and not path.exists() or (path / "config.json").is_file()


def score_checkpoint(composed: DictConfig) -> float:
    """Score the split, or run the tasks; returns the perplexity, or the first task's first
    metric (for sweepers)."""
    cfg = cli.typed(composed, EvalConfig)
    if cfg.eval.tasks:
        return score_tasks(cfg)
    return score_perplexity(cfg)


def score_tasks(cfg: EvalConfig) -> float:
    """lm-evaluation-harness tasks: eval.json and the W&B summary get each task's metrics."""
    with collector.paused(freeze=True):  # torch, the harness and the model code: as long-lived as the process
        from gpt2exp.evaluation.tasks import TaskRequest, flat_metrics, prepare, run_tasks
        from gpt2exp.modeling.inference_layout import to_inference_layout

    settings = cfg.eval
    request = TaskRequest(tasks=list(settings.tasks), num_fewshot=settings.num_fewshot, limit=settings.limit,
                          include_path=settings.include_path)
    manager = prepare(request)
    device = resolve_device(settings.device, key="eval.device")
    precision = resolve_precision(settings.precision, device, key="eval.precision")
    model = to_inference_layout(load_model(cfg).to(device).eval(), precision, use="score", settings=cfg.inference)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with Tracker(run_dir, config=plain(cfg), job_type="eval", **cli.tracker_options(cfg.logger)) as tracker:
        result = run_tasks(model, request, manager=manager, batch_size=settings.batch_size, precision=precision)
        result["model"] = cfg.ckpt or cfg.model.init
        write_json_atomic(run_dir / RunLayout.EVAL, result)
        metrics = flat_metrics(result)
        tracker.summary(metrics)
    for key, value in metrics.items():
        log.info("%s: %.4f", key, value)
    return next(iter(metrics.values()), math.nan)


def score_perplexity(cfg: EvalConfig) -> float:
    """Score the split; returns its perplexity."""
    with collector.paused(freeze=True):  # torch and the model code: objects that live as long as the process
        import torch

        from gpt2exp.data import load_eval_text, whole_files
        from gpt2exp.evaluation.sliding_windows import default_stride, score_text
        from gpt2exp.modeling.inference_layout import to_inference_layout

    settings, data = cfg.eval, cfg.data
    device = resolve_device(settings.device, key="eval.device")
    precision = resolve_precision(settings.precision, device, key="eval.precision")
    model = load_model(cfg)
    context = model.cfg.context_length
    stride = settings.stride or default_stride(context)
    if stride > context:
        raise UserError(f"eval.stride={stride} is not allowed: must be at most the model's context ({context})")
    text = load_eval_text(data, split=settings.split)
    token_ids = torch.tensor(get_encoding().encode(text, allowed_special="all"))
    if len(token_ids) < 2:
        raise UserError(f"eval.split={settings.split}: the text has fewer than 2 tokens")
    model = to_inference_layout(model.to(device).eval(), precision, use="score", settings=cfg.inference)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with Tracker(run_dir, config=plain(cfg), job_type="eval", **cli.tracker_options(cfg.logger)) as tracker:
        score = score_text(model, token_ids, stride=stride, batch_size=settings.batch_size,
                           precision=precision, progress=f"scoring {settings.split}")
        if math.isnan(score.nll_sum):
            raise UserError(f"eval: the model's NLL came out NaN (NaN or overflowing values in its weights or "
                            f"activations at eval.precision={settings.precision}); no result written")
        result = {
            "split": "text" if whole_files(data) else str(settings.split),
            "tokens": score.tokens,
            "mean_nll": score.mean_nll,
            "perplexity": score.perplexity,
            "bits_per_byte": score.bits_per_byte(len(text.encode("utf-8"))),
            "stride": stride,
            "context_length": context,
        }
        write_json_atomic(run_dir / RunLayout.EVAL, result)
        tracker.summary({f"eval/{key}": value for key, value in result.items()})
    log.info("%s: %s tokens | mean NLL %.4f | perplexity %.3f | %.4f bits/byte | stride %d of context %d",
             result["split"], f"{score.tokens:,}", score.mean_nll, score.perplexity, result["bits_per_byte"],
             stride, context)
    return score.perplexity


main = cli.hydra_command("eval", score_checkpoint)


if __name__ == "__main__":
    main()
