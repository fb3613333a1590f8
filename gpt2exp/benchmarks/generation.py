"""Generation speed: KV-cached vs recomputing the context each step vs Hugging Face ``generate``."""

import copy
import time
from collections.abc import Callable, Sequence

import torch

from gpt2exp.benchmarks.transformers_baseline import to_hf
from gpt2exp.config import InferenceConfig
from gpt2exp.devices import FP32, Precision
from gpt2exp.modeling.decoding import generate
from gpt2exp.modeling.inference_layout import to_inference_layout
from gpt2exp.modeling.model import GPTModel

# "Every effort moves you", the tutorial's start context, as GPT-2 tokens.
PROMPT = (6109, 3626, 6100, 345)


def measure_generation(
    model: GPTModel, *, new_tokens: int = 256, prompt: Sequence[int] = PROMPT, repeats: int = 3, hf: bool = True,
    num_samples: int = 8, precision: Precision = FP32, settings: InferenceConfig | None = None,
) -> dict:
    """Greedy tokens/s for one prompt (batch 1) with gpt2exp's KV-cached ``generate`` (on CUDA
    also without its CUDA graph), with it recomputing the whole context each step (the
    tutorial's method, ``use_cache=False``), and with ``transformers.GPT2LMHeadModel.generate``
    on the same weights; then sampling ``num_samples`` continuations at once (temperature 1,
    top-k 50), whose tokens/s count every row. Everything runs in ``precision``, gpt2exp's
    model in the inference layout of ``settings``.

    The runs take turns ``repeats`` times after a warm-up; each figure is the best run.
    ``hf_same_tokens`` says whether HF generated the same tokens as gpt2exp. HF is left out
    when the prompt plus ``new_tokens`` exceeds ``context_length`` (it cannot slide the window).
    """
    ours = to_inference_layout(copy.deepcopy(model).eval(), precision, settings=settings)
    prompts = [list(prompt)]
    device = model.tok_emb.weight.device
    batch = [list(prompt)] * num_samples

    def sampled(n: int) -> list[int]:
        generators = [torch.Generator(device).manual_seed(i) for i in range(num_samples)]
        return generate(ours, batch, max_new_tokens=n, temperature=1.0, top_k=50, generator=generators).new_tokens[0]

    runs: dict[str, Callable[[int], list[int]]] = {
        "cached": lambda n: generate(ours, prompts, max_new_tokens=n).new_tokens[0],
        "recompute": lambda n: generate(ours, prompts, max_new_tokens=n, use_cache=False).new_tokens[0],
    }
    if device.type == "cuda":
        runs["cached_no_graph"] = lambda n: generate(ours, prompts, max_new_tokens=n, cuda_graph=False).new_tokens[0]
    if hf and len(prompt) + new_tokens <= model.cfg.context_length:
        runs["hf"] = _hf_generate(model, prompts)
    runs["sampled_batch"] = sampled
    if "hf" in runs:
        runs["hf_sampled_batch"] = _hf_generate(model, prompts, do_sample=True, temperature=1.0, top_k=50,
                                                num_return_sequences=num_samples)

    with precision.autocast():
        for run in runs.values():
            run(2)
        best = dict.fromkeys(runs, float("inf"))
        tokens = {}
        for _ in range(repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                tokens[name] = run(new_tokens)
                best[name] = min(best[name], time.perf_counter() - start)

    result: dict[str, float | bool] = {"new_tokens": new_tokens, "prompt_tokens": len(prompt),
                                       "threads": torch.get_num_threads(),
                                       "num_samples": num_samples}
    rows = {"sampled_batch": num_samples, "hf_sampled_batch": num_samples}
    result |= {f"{name}_tokens_per_sec": rows.get(name, 1) * new_tokens / seconds for name, seconds in best.items()}
    result["cached_vs_recompute"] = best["recompute"] / best["cached"]
    if "hf" in runs:
        result["cached_vs_hf"] = best["hf"] / best["cached"]
        result["hf_same_tokens"] = tokens["hf"] == tokens["cached"]
    return result


def _hf_generate(model: GPTModel, prompts: list[list[int]], **options) -> Callable[[int], list[int]]:
    """A function generating n tokens with transformers' ``generate`` and ``options`` (greedy by
    default); it returns the first row's new tokens."""
    hf_model = to_hf(model).eval()
    hf_model.generation_config.eos_token_id = None
    hf_model.generation_config.pad_token_id = 0
    input_ids = torch.tensor(prompts, device=model.tok_emb.weight.device)

    @torch.inference_mode()
    def run(n: int) -> list[int]:
        out = hf_model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=n,
                                **{"do_sample": False, **options})
        return out[0, input_ids.size(1) :].tolist()

    return run
