"""Decoding: the tutorial's numbers, top-p, batches of different lengths, eos, seeds, KV cache, the
graph step's fixed-shape decoding and its fallback, the inference layout."""
import dataclasses
import logging

import pytest
import torch

from gpt2exp.config import ModelConfig
from gpt2exp.devices import Precision
from gpt2exp.evaluation.sliding_windows import score_text
from gpt2exp.modeling import decoding, inference_layout
from gpt2exp.modeling.decoding import filter_logits, generate, next_token
from gpt2exp.modeling.inference_layout import PackedLinear, to_inference_layout
from gpt2exp.modeling.model import GPTModel

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


@pytest.mark.parametrize("layout", inference_layout.CANDIDATES)
def test_inference_layout_changes_no_token_or_score(layout, monkeypatch):
    """Each layout that ``inference.layout=auto`` may choose generates what the training layout
    does (padded rows, sampling, past the context) and scores text alike."""
    monkeypatch.setattr(inference_layout, "choose_layout", lambda model, use, weights: layout)
    model = GPTModel(TINY).eval()
    with torch.no_grad():  # biases too (they start at zero)
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    fast = GPTModel(TINY).eval()
    fast.load_state_dict(model.state_dict())
    to_inference_layout(fast)
    assert isinstance(fast.out_head, PackedLinear) == layout.startswith("packed")
    if layout == "transposed":
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


class FakeCapture:
    """A graph "capture" for the CPU: each replay runs the fixed-shape step as it is (all of the
    graph path but the capture), counting captures and replays; it raises at ``fail_at``
    ("capture", or the number of a replay), after the step has written the cache as a real
    warm-up or replay would."""

    def __init__(self, fail_at: str | int | None = None):
        self.fail_at, self.captures, self.replays = fail_at, 0, 0

    def __call__(self, step, device):
        self.captures += 1
        if self.fail_at == "capture":
            step()
            raise RuntimeError("capture refused")

        def replay():
            self.replays += 1
            logits = step()
            if self.replays == self.fail_at:
                raise RuntimeError("replay refused")
            return logits

        return replay


def graph_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gpt2exp.modeling.decoding" and r.levelno == logging.WARNING]


PADDED = [[5, 6], [7, 8, 9, 10, 11, 12, 13], [14, 15, 16, 17]]


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
@pytest.mark.parametrize("settings", [{"temperature": 0.0}, SAMPLED], ids=["greedy", "sampled"])
def test_fixed_shape_graph_step_equals_recomputing_in_fp32(pos_emb, settings, monkeypatch, caplog):
    """The step a CUDA graph captures (``decode_hidden`` over the whole cache, masked by
    position), run on the CPU: the tokens and log-probs of recomputing, with padding and past
    the context (where the window slides and the graph step hands over). With rotary positions
    each row's new query and key turn by its own position (the cache slot less its padding)."""
    torch.manual_seed(0)
    model = GPTModel(dataclasses.replace(TINY, pos_emb=pos_emb)).eval()
    capture = FakeCapture()
    monkeypatch.setitem(decoding.GRAPH_CAPTURES, "cpu", capture)
    runs = {use_cache: generate(model, PADDED, max_new_tokens=20, use_cache=use_cache, generator=seeded(1, 2, 3),
                                **settings) for use_cache in (True, False)}
    assert capture.captures == 1 and capture.replays == 16 - 7  # every one-token step until the window is full
    assert runs[True].new_tokens == runs[False].new_tokens
    torch.testing.assert_close(torch.tensor(runs[True].logprobs), torch.tensor(runs[False].logprobs), atol=1e-4,
                               rtol=0)
    assert not graph_warnings(caplog)


@pytest.mark.parametrize("settings", [{"temperature": 0.0}, SAMPLED], ids=["greedy", "sampled"])
def test_fixed_shape_graph_step_under_bf16_autocast_scores_as_recomputing_does(settings, monkeypatch, caplog):
    """Under bf16 autocast (a bf16 KV cache) the graph step's log-probs are those of the whole
    sequence recomputed under autocast, token for token, padding included; a greedy pick is the
    recomputed argmax or within bf16's rounding of it."""
    torch.manual_seed(0)
    model = GPTModel(ModelConfig(context_length=32, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)).eval()
    capture = FakeCapture()
    monkeypatch.setitem(decoding.GRAPH_CAPTURES, "cpu", capture)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = generate(model, PADDED, max_new_tokens=24, generator=seeded(1, 2, 3), **settings)
        width = max(map(len, PADDED))
        tokens = torch.tensor([[0] * (width - len(p)) + row for p, row in zip(PADDED, out.token_ids)])
        pad = torch.tensor([width - len(p) for p in PADDED])
        with torch.no_grad():
            reference = torch.log_softmax(model(tokens[:, :-1], pad=pad).float(), dim=-1)[:, width - 1 :]
    assert capture.replays == 23 and not graph_warnings(caplog)
    ours = torch.tensor(out.logprobs)
    chosen = reference.gather(2, tokens[:, width:, None])[..., 0]
    torch.testing.assert_close(ours, chosen, atol=0.02, rtol=0)
    if not settings["temperature"]:
        assert bool((chosen >= reference.max(dim=-1).values - 0.02).all())


@pytest.mark.parametrize("fail_at", ["capture", 3], ids=["capture", "third-replay"])
def test_a_failing_graph_warns_once_and_decoding_goes_on_with_the_same_tokens(model, fail_at, monkeypatch, caplog):
    """A graph step must not take a run down (its every sample goes through it): when capturing
    or replaying raises, one warning names the error, the step is computed eagerly, and later
    calls decode without the graph from the start."""
    capture = FakeCapture(fail_at)
    monkeypatch.setitem(decoding.GRAPH_CAPTURES, "cpu", capture)
    runs = [generate(model, PADDED, max_new_tokens=12, generator=seeded(1, 2, 3), **SAMPLED) for _ in range(2)]
    eager = generate(model, PADDED, max_new_tokens=12, generator=seeded(1, 2, 3), cuda_graph=False, **SAMPLED)
    error = "RuntimeError: capture refused" if fail_at == "capture" else "RuntimeError: replay refused"
    [warning] = graph_warnings(caplog)
    assert error in warning and "decoding without it" in warning
    assert capture.captures == 1 and capture.replays == (0 if fail_at == "capture" else 3)
    for run in runs:
        assert run.new_tokens == eager.new_tokens and all(len(row) == 12 for row in run.new_tokens)
        torch.testing.assert_close(torch.tensor(run.logprobs), torch.tensor(eager.logprobs), atol=1e-4, rtol=0)
    assert "cpu" not in decoding.GRAPH_CAPTURES
