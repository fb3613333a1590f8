"""inference.layout=auto: the layout is measured once per CPU, PyTorch version, use and shape, then
read from the cache; a corrupt cache is measured again; bf16 weights stay close to fp32's; what
cannot run on this build is refused naming the key; memory bandwidth and decoding's MBU."""
import json

import pytest
import torch

from gpt2exp.benchmarks.bandwidth import decode_bytes_per_token, decode_mbu, read_bandwidth
from gpt2exp.config import InferenceConfig, ModelConfig
from gpt2exp.errors import UserError
from gpt2exp.modeling import inference_layout
from gpt2exp.modeling.decoding import generate
from gpt2exp.modeling.inference_layout import PackedLinear, choose_layout, time_layouts, to_inference_layout
from gpt2exp.modeling.model import GPTModel

TINY = ModelConfig(context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0, qkv_bias=True)
ONEDNN = inference_layout.packing_works()
BF16 = inference_layout.packing_works(torch.bfloat16)


def perturbed() -> GPTModel:
    torch.manual_seed(0)
    model = GPTModel(TINY).eval()
    with torch.no_grad():  # biases too (they start at zero)
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model


@pytest.fixture
def timings(monkeypatch, tmp_path) -> list[tuple[str, str]]:
    """Each measurement's (CPU, use), "transposed" the fastest candidate of every one; the cache
    in a folder of this test's own."""
    monkeypatch.setenv("GPT2EXP_CACHE_DIR", str(tmp_path / "cache"))
    measured = []

    def time_layouts(model, use, weights="fp32"):
        measured.append((inference_layout.cpu_name(), use))
        return {name: 0.1 if name == "transposed" else 0.2 for name in inference_layout.candidates(weights)}

    monkeypatch.setattr(inference_layout, "time_layouts", time_layouts)
    return measured


def test_auto_measures_once_per_cpu_and_use_then_reads_the_cache(timings, monkeypatch):
    model = perturbed()
    for _ in range(2):
        assert choose_layout(model, "decode") == choose_layout(model, "score") == "transposed"
    assert timings == [(inference_layout.cpu_name(), "decode"), (inference_layout.cpu_name(), "score")]
    monkeypatch.setattr(inference_layout, "cpu_name", lambda: "Another CPU")
    to_inference_layout(perturbed())
    assert timings[-1] == ("Another CPU", "decode") and len(timings) == 3
    cached = json.loads(inference_layout.cache_path().read_text())
    assert len(cached) == 3 and {entry["layout"] for entry in cached.values()} == {"transposed"}
    assert choose_layout(perturbed(), "decode") == "transposed" and len(timings) == 3


def test_a_corrupt_cache_is_measured_again_and_rewritten(timings):
    path = inference_layout.cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"half a fi')
    assert choose_layout(perturbed(), "decode") == "transposed" and len(timings) == 1
    assert list(json.loads(path.read_text()).values())[0]["layout"] == "transposed"


def test_a_forced_layout_is_not_measured(timings):
    model = to_inference_layout(perturbed(), settings=InferenceConfig(layout="linear"))
    assert timings == [] and model.out_head.weight.is_contiguous()


def test_time_layouts_times_every_candidate_on_a_real_model():
    seconds = time_layouts(perturbed(), "decode", repeats=1)
    assert list(seconds) == list(inference_layout.candidates()) and all(value > 0 for value in seconds.values())
    assert list(time_layouts(perturbed(), "score", repeats=1)) == list(inference_layout.candidates())


@pytest.mark.skipif(not BF16, reason="this CPU or PyTorch build has no native bf16 packed Linear")
def test_bf16_weights_keep_the_logits_close_and_the_greedy_tokens(timings):
    model = perturbed()
    fast = to_inference_layout(perturbed(), settings=InferenceConfig(weights="bf16"))
    assert all(isinstance(m, PackedLinear) and m.packed_weight.dtype == torch.bfloat16
               for m in fast.modules() if isinstance(m, (torch.nn.Linear, PackedLinear)))
    tokens = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        torch.testing.assert_close(fast(tokens), model(tokens), atol=0.05, rtol=0.02)
    prompts = [[1, 2, 3, 4]]
    ours, reference = (generate(m, prompts, max_new_tokens=10) for m in (fast, model))
    torch.testing.assert_close(torch.tensor(ours.logprobs), torch.tensor(reference.logprobs), atol=0.05, rtol=0)


@pytest.mark.parametrize(("settings", "key"), [
    (InferenceConfig(layout="transposed", weights="bf16"), "inference.layout=transposed"),
    *[(InferenceConfig(weights="bf16"), "inference.weights=bf16")] * (not BF16),
    *[(InferenceConfig(layout="packed"), "inference.layout=packed")] * (not ONEDNN),
])
def test_what_this_build_cannot_run_is_refused_naming_the_key(settings, key):
    with pytest.raises(UserError, match=f"^{key}"):
        to_inference_layout(perturbed(), settings=settings)


def test_a_bad_layout_name_is_refused_naming_the_key():
    with pytest.raises(UserError, match=r"^inference.layout='fastest' is not allowed: one of auto, linear"):
        InferenceConfig(layout="fastest")


def test_decoding_mbu_counts_weights_once_and_the_mean_kv_cache():
    model = GPTModel(TINY)
    emb, layers = 32, 2
    weights = layers * 12 * emb * emb + 50257 * emb
    biases = layers * (3 * emb + emb + 4 * emb + emb)
    assert decode_bytes_per_token(model, context_tokens=0) == 4 * (weights + biases)
    kv = 2 * layers * emb * 4  # keys and values, fp32, per position
    assert decode_bytes_per_token(model, context_tokens=10) == 4 * (weights + biases) + 10 * kv
    # 9 new tokens after a 4-token prompt: 8 earlier positions on average
    assert decode_mbu(model, 100.0, 1e9, prompt_tokens=4, new_tokens=9) == pytest.approx(
        (4 * (weights + biases) + 8 * kv) * 100 / 1e9)


def test_read_bandwidth_is_bytes_over_seconds():
    assert read_bandwidth(torch.device("cpu"), size_bytes=2**20, repeats=1) > 0
