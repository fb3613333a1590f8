"""The generation benchmark compares like with like: HF holds our weights and gives our logits."""

import pytest
import torch

from gpt2exp.benchmarks.generation import measure_generation
from gpt2exp.benchmarks.hf import to_hf
from gpt2exp.config import ModelConfig
from gpt2exp.model import GPTModel


@pytest.mark.parametrize(("qkv_bias", "tied"), [(False, True), (True, True), (False, False)])
def test_hf_model_gives_the_same_logits(qkv_bias, tied):
    torch.manual_seed(0)
    model = GPTModel(ModelConfig(context_length=32, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0, qkv_bias=qkv_bias,
                               tie_embeddings=tied))
    for param in model.parameters():  # biases and norms away from their 0/1 init, so a swap would show
        torch.nn.init.normal_(param, std=0.1)
    model.eval()
    tokens = torch.randint(0, 50257, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(to_hf(model).eval()(tokens).logits, model(tokens), atol=1e-4, rtol=0)


def test_measure_generation_reports_each_method():
    torch.manual_seed(0)
    model = GPTModel(ModelConfig(context_length=32, emb_dim=32, n_heads=2, n_layers=1, drop_rate=0.0, qkv_bias=False))
    result = measure_generation(model, new_tokens=8, repeats=1)
    assert result["new_tokens"] == 8 and result["hf_same_tokens"] is True
    assert all(result[f"{name}_tokens_per_sec"] > 0 for name in ("cached", "recompute", "hf"))
    assert result["cached_vs_hf"] == pytest.approx(result["cached_tokens_per_sec"] / result["hf_tokens_per_sec"])
    assert "hf_tokens_per_sec" not in measure_generation(model, new_tokens=40, repeats=1)
    assert model.out_head.weight.is_contiguous()  # the caller's model keeps its layout
