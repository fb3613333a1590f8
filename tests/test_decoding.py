"""Decoding: the tutorial's numbers, top-p, batches of different lengths, eos, seeds, KV cache, the
inference layout."""

import pytest
import torch
from helpers import requires_cuda

from gpt2exp import inference_layout
from gpt2exp.config import ModelConfig
from gpt2exp.decoding import filter_logits, generate, next_token
from gpt2exp.devices import Precision
from gpt2exp.inference_layout import PackedLinear, to_inference_layout
from gpt2exp.model import GPTModel
from gpt2exp.perplexity import score_text

TINY = ModelConfig(context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0, qkv_bias=True)
SAMPLED = {"temperature": 1.5, "top_k": 50}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPTModel(TINY).eval()


@pytest.fixture(scope="module")
def toy_logits():
    """The tutorial's next-token logits over its 8-word vocabulary."""
    torch.manual_seed(123)
    return torch.normal(0, 4, (8,))


def seeded(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed) for seed in seeds]


def test_top_k_matches_the_tutorial(toy_logits):
    probs = torch.softmax(filter_logits(toy_logits[None], top_k=3), dim=-1)[0]
    expected = torch.tensor([0.1402, 0.3543, 0, 0, 0, 0.5056, 0, 0])
    torch.testing.assert_close(probs, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("temperature", "expected"),
    [
        (1.0, [0.1218, 0.3079, 0.0434, 0.0727, 0.0016, 0.4394, 0.0039, 0.0093]),
        (0.3, [0.0105, 0.2311, 0.0003, 0.0019, 0.0000, 0.7562, 0.0000, 0.0000]),
        (1.5, [0.1480, 0.2747, 0.0744, 0.1050, 0.0082, 0.3482, 0.0149, 0.0266]),
    ],
)
def test_temperature_scaling_matches_the_tutorial(toy_logits, temperature, expected):
    probs = torch.softmax(filter_logits(toy_logits[None], temperature=temperature), dim=-1)[0]
    torch.testing.assert_close(probs, torch.tensor(expected), atol=1e-4, rtol=0)


def test_temperature_zero_is_argmax_and_sampling_follows_the_seed(toy_logits):
    logits = toy_logits.repeat(4, 1)
    assert next_token(logits, temperature=0).flatten().tolist() == [5, 5, 5, 5]
    draws = [next_token(logits, temperature=1.0, generator=g).flatten().tolist() for g in seeded(1, 1, 2)]
    assert draws[0] == draws[1] != draws[2]
    assert set(next_token(logits.repeat(50, 1), temperature=1.0, top_k=3).flatten().tolist()) == {0, 1, 5}


def test_top_p_keeps_the_smallest_set_reaching_p(toy_logits):
    # Sorted probabilities at T=1: 0.4394 (5), 0.3079 (1), 0.1218 (0), 0.0727 (3), ...
    kept = lambda p: torch.isfinite(filter_logits(toy_logits[None], top_p=p))[0].nonzero().flatten().tolist()
    assert kept(0.4) == [5]
    assert kept(0.5) == [1, 5]
    assert kept(0.8) == [0, 1, 5]
    assert kept(1.0) == list(range(8))


@pytest.mark.parametrize("settings", [{"temperature": 0.0}, SAMPLED], ids=["greedy", "sampled"])
def test_kv_cache_equals_recomputing_also_past_the_context(model, settings):
    prompts = [[11, 12, 13, 14, 15], [21, 22, 23, 24, 25]]
    runs = [
        generate(model, prompts, max_new_tokens=30, generator=torch.Generator().manual_seed(7),
                 use_cache=use_cache, **settings)
        for use_cache in (True, False)
    ]
    assert runs[0].new_tokens == runs[1].new_tokens
    assert all(len(row) == 30 for row in runs[0].new_tokens)  # 35 tokens > context_length=16
    torch.testing.assert_close(torch.tensor(runs[0].logprobs), torch.tensor(runs[1].logprobs), atol=1e-4, rtol=0)


@pytest.mark.parametrize("settings", [{"temperature": 0.0}, SAMPLED], ids=["greedy", "sampled"])
def test_prompts_of_different_lengths_batch_as_if_alone(model, settings):
    prompts = [[5, 6], [7, 8, 9, 10, 11, 12, 13], [14, 15, 16, 17]]
    batched = generate(model, prompts, max_new_tokens=14, generator=seeded(1, 2, 3), **settings)
    for prompt, seed, new_tokens in zip(prompts, (1, 2, 3), batched.new_tokens):
        alone = generate(model, [prompt], max_new_tokens=14, generator=seeded(seed), **settings)
        assert alone.new_tokens[0] == new_tokens
    assert batched.token_ids[0][:2] == [5, 6]


def test_each_row_stops_at_eos_and_leaves_it_out(model):
    prompts = [[1, 2, 3], [40, 41, 42, 43]]
    free = generate(model, prompts, max_new_tokens=12).new_tokens
    eos_id = free[0][4]
    stopped = generate(model, prompts, max_new_tokens=12, eos_id=eos_id).new_tokens
    assert stopped[0] == free[0][: free[0].index(eos_id)]
    expected_other = free[1][: free[1].index(eos_id)] if eos_id in free[1] else free[1]
    assert stopped[1] == expected_other and len(stopped[1]) > len(stopped[0])


def test_a_fixed_seed_gives_the_same_text_every_run(model):
    run = lambda seed: generate(model, [[3, 4, 5]] * 2, max_new_tokens=20, generator=torch.Generator().manual_seed(seed),
                                **SAMPLED).new_tokens
    assert run(123) == run(123) != run(124)


def test_logprobs_are_the_models_at_temperature_one(model):
    out = generate(model, [[3, 4, 5]], max_new_tokens=6, temperature=0.7, top_k=5, generator=seeded(0)[0])
    tokens = torch.tensor([out.token_ids[0]])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(tokens[:, :-1]), dim=-1)[0, 2:].gather(1, tokens[0, 3:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(out.logprobs[0]), logprobs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("packed", [True, False], ids=["onednn-packed", "transposed"])
def test_inference_layout_changes_no_token_or_score(packed, monkeypatch):
    """Either layout (oneDNN-packed Linears on this CPU, or transposed weights where oneDNN is
    missing) generates what the training layout does (padded rows, sampling, past the context)
    and scores text alike."""
    monkeypatch.setattr(inference_layout, "packing_works", lambda: packed)
    model = GPTModel(TINY).eval()
    with torch.no_grad():  # biases too (they start at zero)
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    fast = GPTModel(TINY).eval()
    fast.load_state_dict(model.state_dict())
    to_inference_layout(fast)
    assert isinstance(fast.out_head, PackedLinear) == packed
    if not packed:
        assert fast.out_head.weight.t().is_contiguous() and fast.out_head.weight is fast.tok_emb.weight
    prompts = [[1, 2, 3, 4], [5, 6]]
    for settings in ({}, SAMPLED):
        for use_cache in (True, False):
            ours, reference = [generate(m, prompts, max_new_tokens=20, use_cache=use_cache,
                                        generator=seeded(1, 2) if settings else None, **settings) for m in (fast, model)]
            assert ours.new_tokens == reference.new_tokens
            torch.testing.assert_close(torch.tensor(ours.logprobs), torch.tensor(reference.logprobs), atol=1e-4, rtol=0)
    tokens = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        torch.testing.assert_close(fast(tokens), model(tokens), atol=1e-4, rtol=0)
    text = torch.randint(0, TINY.vocab_size, (100,))
    assert score_text(fast, text, stride=8).mean_nll == pytest.approx(score_text(model, text, stride=8).mean_nll, rel=1e-6)


def test_inference_under_autocast_keeps_linear_layers_for_autocast_to_cast():
    model = to_inference_layout(GPTModel(TINY).eval(), Precision("bf16"))
    assert all(not isinstance(module, PackedLinear) for module in model.modules())
    assert model.blocks[0].ff.fc.weight.t().is_contiguous()


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch build has no oneDNN")
def testpacking_works_where_onednn_is_built_in():
    """The fast layout must not fall back silently (a PyTorch upgrade may change its internal ops)."""
    assert inference_layout.packing_works()


def test_empty_prompt_is_refused(model):
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[1], []], max_new_tokens=3)


@requires_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_decoding_equals_eager_decoding(precision):
    """On CUDA the cached steps replay a CUDA graph; they pick what the eager cached steps
    pick, and in fp32 what recomputing picks, also past the context and with padding."""
    torch.manual_seed(0)
    cfg = ModelConfig(context_length=64, emb_dim=64, n_heads=4, n_layers=2, drop_rate=0.0)
    model = GPTModel(cfg).cuda().eval()
    prompts = [[5, 6], [7, 8, 9, 10, 11, 12, 13]]
    ways = {"graph": {}, "eager": {"cuda_graph": False}, "recompute": {"use_cache": False}}
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
        greedy = {name: generate(model, prompts, max_new_tokens=80, **kw) for name, kw in ways.items()}
        sampled = {name: generate(model, prompts, max_new_tokens=20, **SAMPLED, **kw, generator=[
            torch.Generator("cuda").manual_seed(seed) for seed in (1, 2)]).new_tokens for name, kw in ways.items()}
    assert len(greedy["graph"].new_tokens[1]) == 80
    if precision == "bf16":  # bf16 sums in another order over the fixed-length cache: near-ties may flip
        graph_tokens = sum(greedy["graph"].new_tokens + sampled["graph"], [])
        eager_tokens = sum(greedy["eager"].new_tokens + sampled["eager"], [])
        assert sum(a == b for a, b in zip(graph_tokens, eager_tokens)) >= 0.5 * len(eager_tokens)
        return
    for way in ("eager", "recompute"):
        assert greedy["graph"].new_tokens == greedy[way].new_tokens and sampled["graph"] == sampled[way]
        torch.testing.assert_close(torch.tensor(greedy["graph"].logprobs), torch.tensor(greedy[way].logprobs),
                                   atol=1e-4, rtol=0)
