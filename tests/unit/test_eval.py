"""Held-out perplexity, sliding windows: each token scored once, equal to an independent loop
over transformers' model with the same weights, and ``python -m gpt2exp.eval`` end to end."""
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_MODEL

from gpt2exp.benchmarks.transformers_baseline import to_hf
from gpt2exp.config import ModelConfig
from gpt2exp.evaluation.sliding_windows import score_text, windows
from gpt2exp.modeling.model import GPTModel


@pytest.mark.parametrize(("n_tokens", "context", "stride"), [(100, 32, 32), (100, 32, 8), (33, 32, 16), (5, 32, 7)])
def test_every_token_but_the_first_is_scored_exactly_once(n_tokens, context, stride):
    scored = []
    for begin, end, first in windows(n_tokens, context, stride):
        assert end - begin <= context + 1 and begin < first <= end
        scored += range(first, end)
    assert scored == list(range(1, n_tokens))


def hf_loop(hf_model, ids: torch.Tensor, context: int, stride: int) -> tuple[float, int]:
    """Written apart from gpt2exp: the transformers guide's loop, each token scored once."""
    nll, count, scored_to = 0.0, 0, 1
    for begin in range(0, len(ids) - 1, stride):
        end = min(begin + context + 1, len(ids))
        logits = hf_model(ids[None, begin : end - 1]).logits[0]
        targets = ids[begin + 1 : end]
        keep = end - scored_to
        nll += F.cross_entropy(logits[-keep:], targets[-keep:], reduction="sum").item()
        count, scored_to = count + keep, end
        if end == len(ids):
            break
    return nll, count


@pytest.mark.parametrize("stride", [32, 12])
def test_perplexity_equals_an_independent_transformers_loop(stride):
    torch.manual_seed(0)
    model = GPTModel(ModelConfig(**TINY_MODEL)).eval()
    ids = torch.randint(0, 50257, (150,))
    score = score_text(model, ids, stride=stride, batch_size=3)
    with torch.no_grad():
        nll, count = hf_loop(to_hf(model).eval(), ids, TINY_MODEL["context_length"], stride)
    assert score.tokens == count == len(ids) - 1
    assert score.perplexity == pytest.approx(math.exp(nll / count), rel=1e-4)
