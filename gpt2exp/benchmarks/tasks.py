"""The bench's ``tasks`` section: lm-evaluation-harness examples per second of gpt2exp's scorer
(`evaluation.harness_model`) against the harness's own HFLM over the same weights converted in
memory to transformers' GPT2LMHeadModel, on the same task, in one process, taken in turn. The
task is written here: HellaSwag's shape (a context of about 80 tokens, four endings of 15 to 35),
its words drawn from GPT-2's vocabulary, so it runs offline."""

from __future__ import annotations

import dataclasses
import json
import random
import tempfile
import time
from pathlib import Path

from gpt2exp.benchmarks.transformers_baseline import to_hf
from gpt2exp.devices import FP32, Precision
from gpt2exp.evaluation.tasks import TaskRequest, prepare, run_tasks
from gpt2exp.modeling.hf_format import write_tokenizer_files
from gpt2exp.modeling.inference_layout import to_inference_layout
from gpt2exp.modeling.model import GPTModel


def gpt2_tokenizer(context_length: int):
    """transformers' GPT-2 tokenizer from the vocabulary this project ships (no download)."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as folder:
        write_tokenizer_files(Path(folder), context_length)
        return AutoTokenizer.from_pretrained(folder)


def hflm(model: GPTModel, batch_size: int):
    """The harness's HFLM over `model`'s weights as a GPT2LMHeadModel (fp32, the model's device)."""
    from lm_eval.models.huggingface import HFLM

    device = model.tok_emb.weight.device
    return HFLM(pretrained=to_hf(model).eval(), tokenizer=gpt2_tokenizer(model.cfg.context_length), batch_size=batch_size,
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
    """Examples per second over the request's tasks: gpt2exp's scorer, then HFLM (after an untimed
    one-example run that reads the data), their ratio and the first task's accuracy by each."""
    laid_out = to_inference_layout(_copy(model), precision, use="score")
    warmup = dataclasses.replace(request, limit=1)  # the data set read and cached, the task index built: untimed
    run_tasks(laid_out, warmup, batch_size=batch_size, precision=precision)
    start = time.perf_counter()
    ours = run_tasks(laid_out, request, batch_size=batch_size, precision=precision)
    ours_s = time.perf_counter() - start
    examples = sum(task["examples"] or 0 for task in ours["tasks"].values())
    start = time.perf_counter()
    theirs = hflm_results(model, request, batch_size)["results"]
    hf_s = time.perf_counter() - start
    first = request.tasks[0]
    return {"tasks": list(request.tasks), "examples": examples, "gpt2exp_examples_per_s": examples / ours_s,
            "hflm_examples_per_s": examples / hf_s, "speedup": hf_s / ours_s,
            "gpt2exp_acc": ours["tasks"][first]["metrics"].get("acc"), "hflm_acc": theirs[first].get("acc,none")}


def _copy(model: GPTModel) -> GPTModel:
    """A copy of `model` to lay out for inference (the layout changes a model in place)."""
    copy = GPTModel.unfilled(model.cfg, model.tok_emb.weight.device)
    copy.load_state_dict(model.state_dict())
    return copy.eval()


CHOICE_TASK = "bench_choices"


def write_choice_task(folder: Path, questions: int, context_length: int = 1024, seed: int = 0) -> Path:
    """`folder` holding a HellaSwag-shaped multiple-choice task (`CHOICE_TASK`) of `questions`
    questions, shrunk to fit a model of a shorter `context_length` (each word is one token)."""
    from gpt2exp.tokenizer import get_encoding

    encoding, rng = get_encoding(), random.Random(seed)
    words = [word for word in (encoding.decode([i]) for i in range(256, 20000)) if word.startswith(" ") and
             word[1:].isalpha()]

    def text(count: int) -> str:
        return "".join(rng.choice(words) for _ in range(count)).strip()

    with (folder / "choices.jsonl").open("w", encoding="utf-8") as f:
        for i in range(questions):
            endings = [text(rng.randint(min(15, context_length // 4), min(35, context_length // 3))) for _ in range(4)]
            f.write(json.dumps({"ctx": text(min(80, context_length // 2)), "endings": endings, "label": i % 4}) + "\n")
    (folder / "choices.yaml").write_text(
        f"task: {CHOICE_TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'choices.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{ctx}}'\ndoc_to_target: '{{label}}'\n"
        "doc_to_choice: '{{endings}}'\nmetric_list:\n  - {metric: acc, aggregation: mean, higher_is_better: true}\n"
        "metadata:\n  version: 1.0\n", encoding="utf-8")
    return folder


def task_rows(model: GPTModel, questions: int, batch_size: int) -> list[tuple[str, str, float, str]]:
    """The bench table's rows: each scorer's examples per second on `questions` questions of
    the written task, and their ratio."""
    import logging

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as folder:
        request = TaskRequest(tasks=[CHOICE_TASK], include_path=str(write_choice_task(Path(folder), questions, model.cfg.context_length)),
                              key="bench.sections", include_key="bench.sections")
        result = bench_tasks(model, request, batch_size=batch_size)
    what = f"{questions} x 4 choices, batch {batch_size}"
    return [("tasks", f"gpt2exp scorer ({what})", result["gpt2exp_examples_per_s"], "examples/s"),
            ("tasks", f"HFLM ({what})", result["hflm_examples_per_s"], "examples/s"),
            ("tasks", "gpt2exp / HFLM", result["speedup"], "x"),
            ("tasks", "acc, gpt2exp scorer", result["gpt2exp_acc"], ""),
            ("tasks", "acc, HFLM", result["hflm_acc"], "")]
