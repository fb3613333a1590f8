"""Generation speed: KV-cached vs recomputing the context each step vs Hugging Face ``generate``."""

import copy
import time
from collections.abc import Callable, Sequence

import torch

from gpt2exp.decoding import generate, to_decoding_layout
from gpt2exp.model import GPTModel

# "Every effort moves you", the tutorial's start context, as GPT-2 tokens.
PROMPT = (6109, 3626, 6100, 345)


def measure_generation(
    model: GPTModel, *, new_tokens: int = 256, prompt: Sequence[int] = PROMPT, repeats: int = 3, hf: bool = True
) -> dict:
    """Greedy tokens/s for one prompt (batch 1) with gpt2exp's KV-cached ``generate``, with it
    recomputing the whole context each step (the tutorial's method, ``use_cache=False``), and
    with ``transformers.GPT2LMHeadModel.generate`` on the same weights.

    The three run in turn ``repeats`` times after a warm-up; each figure is the best run.
    ``hf_same_tokens`` says whether HF generated the same tokens as gpt2exp. HF is left out
    when the prompt plus ``new_tokens`` exceeds ``context_length`` (it cannot slide the window).
    """
    ours = to_decoding_layout(copy.deepcopy(model).eval())
    prompts = [list(prompt)]
    runs: dict[str, Callable[[int], list[int]]] = {
        "cached": lambda n: generate(ours, prompts, max_new_tokens=n).new_tokens[0],
        "recompute": lambda n: generate(ours, prompts, max_new_tokens=n, use_cache=False).new_tokens[0],
    }
    if hf and len(prompt) + new_tokens <= model.cfg.context_length:
        runs["hf"] = _hf_greedy(model, prompts)

    for run in runs.values():
        run(2)
    best = dict.fromkeys(runs, float("inf"))
    tokens = {}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            tokens[name] = run(new_tokens)
            best[name] = min(best[name], time.perf_counter() - start)

    result = {"new_tokens": new_tokens, "threads": torch.get_num_threads()}
    result |= {f"{name}_tokens_per_sec": new_tokens / seconds for name, seconds in best.items()}
    result["cached_vs_recompute"] = best["recompute"] / best["cached"]
    if "hf" in runs:
        result["cached_vs_hf"] = best["hf"] / best["cached"]
        result["hf_same_tokens"] = tokens["hf"] == tokens["cached"]
    return result


def _hf_greedy(model: GPTModel, prompts: list[list[int]]) -> Callable[[int], list[int]]:
    from gpt2exp.benchmarks.hf import to_hf

    hf_model = to_hf(model).eval()
    hf_model.generation_config.eos_token_id = None
    hf_model.generation_config.pad_token_id = 0
    input_ids = torch.tensor(prompts, device=model.tok_emb.weight.device)

    @torch.inference_mode()
    def run(n: int) -> list[int]:
        out = hf_model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=n,
                                do_sample=False)
        return out[0, input_ids.size(1) :].tolist()

    return run
