"""inference.layout=auto: the layout is measured once per CPU, PyTorch version, use and shape, then
read from the cache; a measurement under load is used but not kept; a lead within the noise of
PyTorch's own layout yields PyTorch's; a corrupt cache is measured again; bf16 weights stay close to fp32's; what
cannot run on this build is refused naming the key; memory bandwidth and decoding's MBU."""
import itertools
import json
import logging
import threading
from pathlib import Path

import pytest
import torch

from gpt2exp.benchmarks.bandwidth import decode_bytes_per_token, decode_mbu, read_bandwidth
from gpt2exp.config import InferenceConfig, ModelConfig
from gpt2exp.errors import UserError
from gpt2exp.modeling import inference_layout
from gpt2exp.modeling.decoding import generate
from gpt2exp.modeling.inference_layout import PackedLinear, candidates, choose_layout, time_layouts, to_inference_layout
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


class FakeClock:
    """What the measurement's clock reads: each candidate's step seconds round after round
    (``rounds``; a candidate not named takes 0.2 s every round) and the share of the time the
    threads waited for a CPU (``cpu_wait``); ``measured`` lists each measurement's (CPU, use)."""

    def __init__(self):
        self.rounds: dict[str, list[float]] = {"transposed": [0.1] * inference_layout.REPEATS}
        self.cpu_wait: float | None = 0.01
        self.measured: list[tuple[str, str]] = []

    def timed_rounds(self, steps, *, repeats):
        return {name: [(0.0, s) for s in self.rounds.get(name, [0.2] * repeats)] for name in steps}, self.cpu_wait


@pytest.fixture
def clock(monkeypatch, tmp_path) -> FakeClock:
    """A fake clock for every measurement ("transposed" steadily fastest on a quiet CPU unless a
    test says otherwise); the cache in a folder of this test's own."""
    monkeypatch.setenv("GPT2EXP_CACHE_DIR", str(tmp_path / "cache"))
    fake, measure_layouts = FakeClock(), inference_layout.measure_layouts

    def measure(model, use, weights="fp32"):
        fake.measured.append((inference_layout.cpu_name(), use))
        return measure_layouts(model, use, weights)

    monkeypatch.setattr(inference_layout, "_timed_rounds", fake.timed_rounds)
    monkeypatch.setattr(inference_layout, "_timed_layer", lambda linear, *_: linear)  # never timed: not laid out
    monkeypatch.setattr(inference_layout, "measure_layouts", measure)
    return fake


def kept() -> dict:
    path = inference_layout.cache_path()
    return json.loads(path.read_text()) if path.exists() else {}


def test_auto_measures_once_per_cpu_and_use_then_reads_the_cache(clock, monkeypatch):
    model = perturbed()
    for _ in range(2):
        assert choose_layout(model, "decode") == choose_layout(model, "score") == "transposed"
    assert clock.measured == [(inference_layout.cpu_name(), "decode"), (inference_layout.cpu_name(), "score")]
    monkeypatch.setattr(inference_layout, "cpu_name", lambda: "Another CPU")
    to_inference_layout(perturbed())
    assert clock.measured[-1] == ("Another CPU", "decode") and len(clock.measured) == 3
    cached = kept()
    assert len(cached) == 3 and {entry["layout"] for entry in cached.values()} == {"transposed"}
    assert choose_layout(perturbed(), "decode") == "transposed" and len(clock.measured) == 3


def test_cpus_sharing_a_model_name_are_measured_apart(clock, monkeypatch):
    """A virtual machine may name an AVX2 CPU and an AVX512 one alike ("AMD EPYC")."""
    model = perturbed()
    choose_layout(model, "decode")
    other = "AVX2" if torch.backends.cpu.get_cpu_capability() == "AVX512" else "AVX512"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: other)
    choose_layout(model, "decode")
    assert len(clock.measured) == 2 and clock.measured[0][0] != clock.measured[1][0]
    assert len(kept()) == 2


def test_a_kept_choice_records_the_times_it_was_chosen_on(clock, caplog):
    clock.rounds["linear"] = [0.3, 0.31, 0.3, 0.32, 0.31, 0.3, 0.33]
    with caplog.at_level(logging.INFO, logger=inference_layout.__name__):
        assert choose_layout(perturbed(), "decode") == "transposed"
    [entry] = kept().values()
    assert entry["ms"] == {name: {"linear": 300.0, "transposed": 100.0}.get(name, 200.0) for name in candidates()}
    assert entry["noise_ms"]["linear"] == pytest.approx(10.0) and entry["noise_ms"]["transposed"] == 0
    [line] = caplog.messages
    assert line.startswith("inference layout for decode: transposed (linear 300 ms, transposed 100 ms")
    assert "; the rounds agree within 3%); kept in " in line


NOISY = [0.1, 0.1, 0.175, 0.2, 0.15, 0.1, 0.225]  # most rounds slowed by another process


@pytest.mark.parametrize(("rounds", "cpu_wait", "why"), [
    ({"transposed": NOISY}, 0.01, "the rounds disagree by up to 50%"),
    ({}, 0.3, "this process's threads waited for a CPU 30% of the time"),
])
def test_a_measurement_under_load_is_used_but_not_kept(clock, caplog, rounds, cpu_wait, why):
    """Bursts of load show as rounds that disagree; a steady load (which reorders the layouts,
    the rounds agreeing) as this process waiting for a CPU."""
    clock.rounds.update(rounds)
    clock.cpu_wait = cpu_wait
    with caplog.at_level(logging.INFO, logger=inference_layout.__name__):
        assert choose_layout(perturbed(), "decode") == "transposed"
    assert [len(entry["busy_ms"]) for entry in kept().values()] == [1]
    assert why in caplog.messages[0]
    assert caplog.messages[0].endswith("not kept, the next run measures again (busy measurement 1 of 3)")
    clock.rounds, clock.cpu_wait = {"linear": [0.05] * inference_layout.REPEATS}, 0.0
    assert choose_layout(perturbed(), "decode") == "linear" and len(clock.measured) == 2
    assert [(entry["layout"], "busy_ms" in entry) for entry in kept().values()] == [("linear", False)]
    assert choose_layout(perturbed(), "decode") == "linear" and len(clock.measured) == 2


def test_a_machine_measured_busy_three_times_keeps_the_layout_that_beat_pytorchs_in_each_and_measures_no_more(
        clock, caplog):
    clock.cpu_wait = 0.3
    with caplog.at_level(logging.INFO, logger=inference_layout.__name__):
        for _ in range(inference_layout.BUSY_MEASUREMENTS):
            assert choose_layout(perturbed(), "decode") == "transposed"
    assert len(clock.measured) == 3 and "transposed kept in" in caplog.messages[-1]
    assert "after 3 measurements on a busy machine: it beat linear in every one" in caplog.messages[-1]
    clock.rounds, clock.cpu_wait = {"linear": [0.05] * inference_layout.REPEATS}, 0.0
    assert choose_layout(perturbed(), "decode") == "transposed" and len(clock.measured) == 3


@pytest.mark.parametrize(("measurements", "kept_layout"), [
    # Each busy measurement has another winner, but transposed beat linear in all and was the fastest over all.
    *[([{"transposed": 0.1, "packed": 0.15}, {"transposed": 0.15, "packed": 0.1}, {"transposed": 0.1, "packed": 0.15}],
       "transposed")] * ONEDNN,
    # Transposed won twice by far but lost to linear once: no layout beat linear in every one.
    ([{"transposed": 0.05}, {"transposed": 0.3}, {"transposed": 0.05}], "linear"),
])
def test_busy_measurements_settle_the_layout_together(clock, caplog, measurements, kept_layout):
    """Load reorders the layouts from one measurement to the next: the kept layout must have
    beaten PyTorch's own (0.2 s a step here) in every busy measurement, else PyTorch's own is kept."""
    clock.cpu_wait = 0.3
    with caplog.at_level(logging.INFO, logger=inference_layout.__name__):
        for times in measurements:
            clock.rounds = {name: [value] * inference_layout.REPEATS for name, value in times.items()}
            used = choose_layout(perturbed(), "decode")
    assert used == kept_layout and [entry["layout"] for entry in kept().values()] == [kept_layout]
    assert caplog.messages[-1].endswith("(force inference.layout to change it)")
    assert choose_layout(perturbed(), "decode") == kept_layout and len(clock.measured) == 3


def test_a_busy_choice_kept_by_an_earlier_gpt2exp_is_measured_again(clock):
    model = perturbed()
    path = inference_layout.cache_path()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({inference_layout.cache_key(model, "decode", "fp32"): {
        "layout": "linear", "ms": {}, "noise_ms": {}, "busy_measurements": 3}}))
    assert choose_layout(model, "decode") == "transposed" and len(clock.measured) == 1
    assert choose_layout(model, "decode") == "transposed" and len(clock.measured) == 1


@pytest.mark.parametrize("rounds", [
    {"linear": [0.2, 0.22, 0.21, 0.2, 0.23, 0.2, 0.21],  # within each other's noise
     "transposed": [0.195, 0.2, 0.21, 0.2, 0.205, 0.2, 0.21]},
    {"linear": [0.2] * 7, "transposed": [0.199] * 7},  # steady, but a lead too small to be worth a layout
])
def test_a_lead_within_the_noise_of_pytorchs_own_layout_yields_it(clock, rounds):
    clock.rounds = rounds
    assert choose_layout(perturbed(), "decode") == "linear"
    assert choose_layout(perturbed(), "decode") == "linear" and len(clock.measured) == 1


def test_a_choice_kept_before_measurements_were_checked_is_measured_again(clock):
    path, key = inference_layout.cache_path(), inference_layout.cache_key(perturbed(), "decode", "fp32")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({key: {"layout": "packed", "ms": {"packed": 1.0}}}))
    assert choose_layout(perturbed(), "decode") == "transposed" and len(clock.measured) == 1
    assert kept()[key]["layout"] == "transposed"


def test_a_corrupt_cache_is_measured_again_and_rewritten(clock):
    path = inference_layout.cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"half a fi')
    assert choose_layout(perturbed(), "decode") == "transposed" and len(clock.measured) == 1
    assert list(json.loads(path.read_text()).values())[0]["layout"] == "transposed"


def test_a_forced_layout_is_not_measured(clock):
    model = to_inference_layout(perturbed(), settings=InferenceConfig(layout="linear"))
    assert clock.measured == [] and model.out_head.weight.is_contiguous()


def test_time_layouts_times_every_candidate_on_a_real_model():
    seconds = time_layouts(perturbed(), "decode", repeats=1)
    assert list(seconds) == list(candidates()) and all(value > 0 for value in seconds.values())
    measurement = inference_layout.measure_layouts(perturbed(), "score", repeats=2)
    assert list(measurement.rounds) == list(candidates()) and all(len(r) == 2 for r in measurement.rounds.values())
    if Path("/proc/self/task").is_dir():  # Linux reports how long the threads waited for a CPU
        assert measurement.cpu_wait is not None and measurement.cpu_wait >= 0
        assert str(threading.get_native_id()) in inference_layout._cpu_wait_ns()


@pytest.mark.parametrize(("wait_per_call_ns", "rounds"), [(0, 4), (10**15, inference_layout.MIN_ROUNDS)])
def test_a_measurement_whose_threads_wait_for_a_cpu_stops_early(monkeypatch, wait_per_call_ns, rounds):
    """Under load a measurement is not kept, so it spends no more rounds than it needs to choose."""
    calls = itertools.count()
    monkeypatch.setattr(inference_layout, "_cpu_wait_ns", lambda: {"1": next(calls) * wait_per_call_ns})
    measurement = inference_layout.measure_layouts(perturbed(), "decode", repeats=4)
    assert [len(times) for times in measurement.rounds.values()] == [rounds] * len(candidates())
    assert measurement.cpu_wait is not None and (measurement.cpu_wait > inference_layout.MAX_CPU_WAIT) == bool(
        wait_per_call_ns)


@pytest.mark.skipif(not BF16, reason="this CPU or PyTorch build has no native bf16 packed Linear")
def test_bf16_weights_keep_the_logits_close_and_the_greedy_tokens(clock):
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
