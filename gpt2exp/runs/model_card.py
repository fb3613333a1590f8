"""A model card (the README.md of a Hugging Face model folder) for a trained checkpoint: how it
was trained (model, data, optimizer, steps, tokens, final losses from its run's summary.json),
its evaluation scores (eval.json files), how to load it, its limitations and license."""

from __future__ import annotations

import json
from pathlib import Path

from gpt2exp.errors import UserError
from gpt2exp.runs.layout import RunLayout

LIMITATIONS = (
    "A small GPT-2 trained with gpt2exp for experiments. Its text reads fluently but is often "
    "wrong or incoherent; it carries the biases and errors of its training data, and has not been "
    "evaluated for safety, bias or factual accuracy. Do not use it where such output can harm."
)


def run_summary(ckpt_path: Path) -> dict:
    """The summary.json of the run folder that holds `ckpt_path` (`<run>/checkpoints/<file>`);
    {} for a checkpoint outside a run folder, or a run without one."""
    if ckpt_path.parent.name != RunLayout.CHECKPOINTS:
        return {}
    try:
        return json.loads((ckpt_path.parent.parent / RunLayout.SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def read_evals(paths: list[str], key: str) -> dict[str, dict]:
    """{path as given: its scores} for eval run folders (their eval.json) or eval.json files;
    UserError naming `key` for one that cannot be read."""
    evals = {}
    for given in paths:
        path = Path(given).expanduser()
        path = path / RunLayout.EVAL if path.is_dir() else path
        try:
            evals[given] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise UserError(f"{key}: cannot read '{path}' ({getattr(err, 'strerror', None) or err}); name "
                            f"an eval run folder (python -m gpt2exp.eval writes its {RunLayout.EVAL}) or the file") from None
    return evals


def model_card(*, name: str, checkpoint: dict, parameters: int, summary: dict, evals: dict[str, dict],
               license_id: str, layout: str = "merged") -> str:
    """The card's Markdown, with the Hub's metadata block first. `checkpoint` is the trained
    checkpoint's dict ("config", "step", "extra"), `summary` its run's summary.json, `evals`
    `read_evals`' result; `layout` "merged" (one model folder) or "adapter" (base/ and adapter/)."""
    config = checkpoint.get("config", {})
    model, data, optimizer = config.get("model", {}), config.get("data", {}), config.get("optimizer", {})
    tokens = summary.get("tokens_seen", checkpoint.get("extra", {}).get("train_state", {}).get("tokens_seen"))
    lines = ["---", f"license: {license_id}", "library_name: transformers", "pipeline_tag: text-generation",
             "tags:", "- gpt2", "- gpt2exp", "---", "", f"# {name}", "",
             f"A GPT-2 language model ({parameters:,} parameters; n_layers={model.get('n_layers')}, "
             f"n_heads={model.get('n_heads')}, emb_dim={model.get('emb_dim')}, "
             f"context_length={model.get('context_length')}) trained with gpt2exp on {_data(data)}"
             + (f", starting from `{model['init']}`" if model.get("init") else "") + ".", ""]
    lines += _use(name, layout)
    rows = [("data", _data(data)), ("steps", checkpoint.get("step")),
            ("tokens seen", f"{tokens:,}" if isinstance(tokens, int) else tokens),
            ("optimizer", _optimizer(optimizer)), ("batch size", data.get("batch_size")),
            ("seed", config.get("seed"))]
    if model.get("lora", {}).get("rank"):
        lora = model["lora"]
        rows.append(("LoRA", f"rank {lora['rank']}, alpha {lora.get('alpha')} on {', '.join(lora.get('targets', []))}"))
    rows += [(label, _figure(summary[key])) for key, label in SUMMARY_ROWS if key in summary]
    lines += ["## Training", "", *_table(rows), ""]
    if evals:
        lines += ["## Evaluation", ""]
        for source, scores in evals.items():
            lines += [f"From `{source}`:", "", *_table([(key, _figure(value)) for key, value in _flat(scores)]), ""]
    lines += ["## Limitations", "", LIMITATIONS, "", "## License", "", license_id, ""]
    return "\n".join(lines)


SUMMARY_ROWS = (("final/train_loss", "final train loss"), ("final/val_loss", "final val loss"),
                ("final/val_perplexity", "final val perplexity"), ("best/val_loss", "best val loss"),
                ("test/loss", "test loss"), ("test/perplexity", "test perplexity"),
                ("stopped_early", "stopped early"))


def _data(data: dict) -> str:
    source = data.get("source")
    if source == "pydocs":
        return "gpt2exp's built-in corpus of Python documentation"
    if source == "wikitext":
        return f"WikiText (`{data.get('name')}`)"
    if source == "hf":
        return f"the Hugging Face dataset `{data.get('path')}`" + (f" (`{data['name']}`)" if data.get("name") else "")
    return f"the text of `{Path(str(data.get('path'))).name}`"


def _optimizer(optimizer: dict) -> str:
    return (f"{optimizer.get('name', 'adamw')}, lr {optimizer.get('lr')}, {optimizer.get('schedule')} schedule, "
            f"{optimizer.get('warmup_steps')} warmup steps, weight decay {optimizer.get('weight_decay')}")


def _use(name: str, layout: str) -> list[str]:
    if layout == "adapter":
        code = ["from peft import PeftModel", "from transformers import AutoTokenizer, GPT2LMHeadModel", "",
                f'base = GPT2LMHeadModel.from_pretrained("{name}", subfolder="base")',
                f'model = PeftModel.from_pretrained(base, "{name}", subfolder="adapter")',
                f'tokenizer = AutoTokenizer.from_pretrained("{name}", subfolder="base")']
    else:
        code = ["from transformers import AutoTokenizer, GPT2LMHeadModel", "",
                f'model = GPT2LMHeadModel.from_pretrained("{name}")',
                f'tokenizer = AutoTokenizer.from_pretrained("{name}")']
    return ["## Use", "", "```python", *code, "```", ""]


def _flat(scores: dict, prefix: str = ""):
    """(dotted key, value) of every number or string leaf."""
    for key, value in scores.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float, str)) and not isinstance(value, bool):
            yield f"{prefix}{key}", value


def _figure(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _table(rows: list[tuple[str, object]]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {label} | {value} |" for label, value in rows if value is not None)]
