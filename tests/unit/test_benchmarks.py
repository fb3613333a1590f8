"""The generation benchmarks compare like with like: HF holds our weights and gives our logits, and
each weight layout computes what PyTorch's does from the bytes counted."""

import pytest
import torch

import gpt2exp.benchmarks.layouts
from gpt2exp.benchmarks.generation import measure_generation
from gpt2exp.benchmarks.layouts import layout_times, scoring_speed, weight_read_gb_per_s
from gpt2exp.benchmarks.transformers_baseline import to_hf
from gpt2exp.config import EvalSettings, ModelConfig
from gpt2exp.devices import FP32
from gpt2exp.modeling import inference_layout
from gpt2exp.modeling.inference_layout import PackedLinear, packing_works
from gpt2exp.modeling.model import GPTModel


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


@pytest.fixture
def step_results(monkeypatch) -> dict:
    """Each timed step runs once, its result kept here, and takes half a second."""
    results = {}

    def time_interleaved(steps, *, repeats, warmup, device):
        results.update({name: step() for name, step in steps.items()})
        return dict.fromkeys(steps, 0.5)

    monkeypatch.setattr(gpt2exp.benchmarks.layouts, "time_interleaved", time_interleaved)
    return results


def test_layout_times_time_each_candidate_for_each_use(monkeypatch):
    timed = []
    monkeypatch.setattr(gpt2exp.benchmarks.layouts, "time_layouts",
                        lambda model, use, weights="fp32": timed.append((use, weights)) or {"linear": 0.5})
    times = layout_times(GPTModel(ModelConfig(context_length=32, emb_dim=32, n_heads=2, n_layers=1)))
    bf16 = packing_works(torch.bfloat16)
    assert timed == [("decode", "fp32"), ("score", "fp32"), *[("decode", "bf16")] * bf16]
    assert list(times) == ["decode", "score", *["decode bf16"] * bf16]


def test_weight_read_counts_every_linear_weight_once():
    model = GPTModel(ModelConfig(context_length=32, emb_dim=32, n_heads=2, n_layers=2, qkv_bias=True, pad_vocab_to=64))
    emb, layers = 32, 2  # per block: q/k/v, the attention's projection and the MLP's two layers, with biases
    weights = layers * (3 * emb * emb + emb * emb + 4 * emb * emb + 4 * emb * emb) + 50257 * emb  # no padding rows
    biases = layers * (3 * emb + emb + 4 * emb + emb)
    assert weight_read_gb_per_s(model, 0.5) == pytest.approx((4 * weights + 4 * biases) / 0.5 / 1e9)
    assert weight_read_gb_per_s(model, 0.5, weight_bytes=2) == pytest.approx((2 * weights + 4 * biases) / 0.5 / 1e9)


def test_scoring_speed_scores_the_same_windows_in_both_layouts(step_results, monkeypatch):
    heads, real_score_text = [], gpt2exp.benchmarks.layouts.score_text

    def score_text(model, *args, **kwargs):
        heads.append(type(model.out_head))
        return real_score_text(model, *args, **kwargs)

    monkeypatch.setattr(gpt2exp.benchmarks.layouts, "score_text", score_text)
    monkeypatch.setattr(inference_layout, "choose_layout", lambda model, use, weights: "packed" if use == "score" else "linear")
    torch.manual_seed(0)
    model = GPTModel(ModelConfig(context_length=32, emb_dim=32, n_heads=2, n_layers=1))
    tokens_per_s = scoring_speed(model, FP32)
    windows = EvalSettings().batch_size
    assert tokens_per_s == {"PyTorch layout": windows * 32 / 0.5, "inference layout": windows * 32 / 0.5}
    plain, packed = step_results["PyTorch layout"], step_results["inference layout"]
    assert plain.tokens == packed.tokens == windows * 32
    assert packed.nll_sum == pytest.approx(plain.nll_sum, rel=1e-5)
    assert heads == [torch.nn.Linear, PackedLinear]
    assert isinstance(model.out_head, torch.nn.Linear)  # the caller's model keeps its layout
