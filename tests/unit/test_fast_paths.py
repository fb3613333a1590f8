"""The fast paths change speed, never results: the fused head loss, vocabulary padding, the
fused optimizer, mixed precision, and a model that matches Hugging Face's GPT-2."""

import threading

import pytest
import torch
import torch.nn.functional as F

import gpt2exp.modeling.loss
from gpt2exp.config import DataConfig, ModelConfig, OptimizerConfig, TrainerConfig
from gpt2exp.data import build_data
from gpt2exp.devices import Precision, bf16_supported, resolve_precision
from gpt2exp.errors import UserError
from gpt2exp.modeling.decoding import generate
from gpt2exp.modeling.model import GPTModel
from gpt2exp.training.optimizers import make_optimizer
from gpt2exp.training.trainer import Trainer

TINY = ModelConfig(context_length=32, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0, qkv_bias=False)


def batch(seed=0, rows=3, length=20):
    tokens = torch.randint(0, TINY.vocab_size, (rows, length + 1), generator=torch.Generator().manual_seed(seed))
    return tokens[:, :-1], tokens[:, 1:]


def grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 16 rows, so a 3 x 20 batch takes three full chunks and a partial one, each
    chunk's low-precision softmax in blocks of 6 rows (the last one partial)."""
    monkeypatch.setattr(gpt2exp.modeling.loss, "CHUNK_ROWS", {"cpu": 16})
    monkeypatch.setattr(gpt2exp.modeling.loss, "SOFTMAX_ROWS", {"cpu": 6})


def test_fused_loss_and_gradients_equal_cross_entropy_on_the_logits(small_chunks):
    torch.manual_seed(0)
    model = GPTModel(TINY)
    inputs, targets = batch()
    reference = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
    expected = grads(model, reference)
    loss = model(inputs, targets=targets)
    torch.testing.assert_close(loss, reference)
    for name, grad in grads(model, loss).items():
        torch.testing.assert_close(grad, expected[name], msg=name)
    with torch.no_grad():
        torch.testing.assert_close(model(inputs, targets=targets), reference)


def test_the_kept_logits_buffer_leaves_no_trace_in_a_later_loss(small_chunks):
    """On the CPU a chunk's logits buffer outlives the call: what it holds is never read."""
    torch.manual_seed(0)
    model = GPTModel(TINY)
    inputs, targets = batch()
    with torch.no_grad():
        expected = model(inputs, targets=targets)
        kept = gpt2exp.modeling.loss._logits_buffer(16, TINY.vocab_size, torch.float32, torch.device("cpu"))
        kept.fill_(float("nan"))
        few = model(inputs[:1, :5], targets=targets[:1, :5])
        torch.testing.assert_close(few, F.cross_entropy(model(inputs[:1, :5]).flatten(0, 1), targets[:1, :5].flatten()))
        kept.fill_(float("nan"))
        torch.testing.assert_close(model(inputs, targets=targets), expected)


def test_a_loss_first_computed_in_inference_mode_leaves_training_possible(small_chunks, monkeypatch):
    """Scoring (inference mode) before training in one process, as a sweep's jobs may."""
    monkeypatch.setattr(gpt2exp.modeling.loss, "_kept", threading.local())  # no buffer kept yet
    torch.manual_seed(0)
    model = GPTModel(TINY)
    inputs, targets = batch()
    with torch.inference_mode():
        scored = model(inputs, targets=targets)
    loss = model(inputs, targets=targets)
    loss.backward()
    torch.testing.assert_close(loss.detach(), scored)


def test_fused_loss_under_bf16_autocast_is_close_to_autocast_cross_entropy(small_chunks):
    torch.manual_seed(0)
    model = GPTModel(TINY)
    inputs, targets = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = F.cross_entropy(model(inputs).flatten(0, 1).float(), targets.flatten())
        loss = model(inputs, targets=targets)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, reference, atol=1e-3, rtol=1e-3)
    expected = grads(model, reference)
    for name, grad in grads(model, loss).items():
        torch.testing.assert_close(grad, expected[name], atol=2e-2 * expected[name].abs().max().item(), rtol=0)


def test_vocabulary_padding_changes_no_loss_and_no_sample(small_chunks):
    torch.manual_seed(0)
    plain = GPTModel(TINY)
    padded = GPTModel(ModelConfig(**{**TINY.__dict__, "pad_vocab_to": 64}))
    assert padded.tok_emb.weight.shape[0] == 50304 and padded.out_head.weight is padded.tok_emb.weight
    state = plain.state_dict()
    state["tok_emb.weight"] = torch.cat((state["tok_emb.weight"], torch.randn(47, TINY.emb_dim)))
    state["out_head.weight"] = state["tok_emb.weight"]
    padded.load_state_dict(state)
    inputs, targets = batch()

    assert padded(inputs).shape[-1] == TINY.vocab_size
    torch.testing.assert_close(padded(inputs), plain(inputs))
    torch.testing.assert_close(padded(inputs, targets=targets), plain(inputs, targets=targets))
    padded_grads = grads(padded, padded(inputs, targets=targets))
    assert padded_grads["tok_emb.weight"][TINY.vocab_size :].abs().max() == 0
    torch.testing.assert_close(padded_grads["tok_emb.weight"][: TINY.vocab_size],
                               grads(plain, plain(inputs, targets=targets))["tok_emb.weight"])
    prompt = inputs[:1, :4]
    assert generate(padded, prompt, max_new_tokens=12).new_tokens == generate(plain, prompt, max_new_tokens=12).new_tokens


def test_loss_matches_hugging_face_gpt2_with_the_same_weights():
    from gpt2exp.benchmarks.transformers_baseline import to_hf

    torch.manual_seed(0)
    model = GPTModel(TINY).eval()
    inputs, _ = batch()
    with torch.no_grad():
        hf_loss = to_hf(model)(input_ids=inputs, labels=inputs).loss  # HF shifts the labels itself
        torch.testing.assert_close(model(inputs[:, :-1], targets=inputs[:, 1:]), hf_loss)


def test_optimizer_is_fused_and_decays_matrices_only():
    model = GPTModel(TINY)
    optimizer = make_optimizer(model, OptimizerConfig(lr=1e-3, weight_decay=0.1, betas=[0.9, 0.95]))
    assert optimizer.defaults["fused"]
    decayed, not_decayed = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and not_decayed["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decayed["params"]) and all(p.dim() == 1 for p in not_decayed["params"])


def test_optimizer_can_decay_every_parameter_as_the_tutorial_does():
    model = GPTModel(TINY)
    optimizer = make_optimizer(model, OptimizerConfig(lr=1e-3, weight_decay=0.1, betas=[0.9, 0.999], weight_decay_on="all"))
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.1, 0.1]
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(list(model.parameters()))


def test_auto_precision_is_bf16_on_a_cpu_that_has_it_and_fp16_needs_cuda():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu).name == ("bf16" if bf16_supported(cpu) else "fp32")
    assert resolve_precision("fp32", cpu) == Precision("fp32", "cpu")
    with pytest.raises(UserError, match="^trainer.precision=fp16 is not allowed on cpu"):
        resolve_precision("fp16", cpu)


def test_bf16_autocast_trains_the_model():
    torch.manual_seed(0)
    model = GPTModel(TINY)
    optimizer = make_optimizer(model, OptimizerConfig(lr=3e-3, weight_decay=0.0))
    precision = Precision("bf16", "cpu")
    assert not precision.grad_scaler().is_enabled()
    inputs, targets = batch()
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        with precision.autocast():
            loss = model(inputs, targets=targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert losses[-1] < losses[0] - 1


def test_compiled_model_gives_the_same_loss_and_gradients():
    torch.manual_seed(0)
    model = GPTModel(TINY)
    inputs, targets = batch()
    expected_loss = model(inputs, targets=targets)
    expected = grads(model, expected_loss)
    compiled = torch.compile(model, backend="eager")  # traces like the default backend, compiles nothing
    loss = compiled(inputs, targets=targets)
    torch.testing.assert_close(loss, expected_loss)
    for name, grad in grads(model, loss).items():
        torch.testing.assert_close(grad, expected[name], msg=name)


def test_inductor_gives_the_eager_loss_and_gradients():
    """The compiler trainer.compile uses (Inductor, the default backend; C++ kernels on the CPU)
    computes what the eager model does, to fp32 rounding."""
    torch.manual_seed(0)
    model = GPTModel(TINY)
    inputs, targets = batch()
    expected_loss = model(inputs, targets=targets)
    expected = grads(model, expected_loss)
    loss = torch.compile(model, dynamic=False)(inputs, targets=targets)
    torch.testing.assert_close(loss, expected_loss)
    for name, grad in grads(model, loss).items():
        torch.testing.assert_close(grad, expected[name], msg=name)

def test_compiled_training_compiles_the_step_once(tmp_path, monkeypatch):
    """trainer.compile: the training step is compiled once; evaluation (every step here, with a
    partial last val batch) adds no graph, and the losses are the eager run's."""
    graphs = []

    def counting_backend(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **options: real_compile(model, backend=counting_backend,
                                                                                 **options))
    (tmp_path / "story.txt").write_text(" ".join(f"word{i % 97}" for i in range(3000)), encoding="utf-8")
    data_cfg = DataConfig(source="text", path=str(tmp_path / "story.txt"), train_ratio=0.9, batch_size=4,
                          cache_dir=str(tmp_path / "cache"))

    def run(compile_: bool) -> tuple[list[float], int]:
        torch.manual_seed(0)
        model = GPTModel(TINY)
        data = build_data(data_cfg, context_length=TINY.context_length, seed=0)
        assert len(data.val_loader.dataset) % 4, "the val split must end in a partial batch"
        cfg = TrainerConfig(max_steps=6, eval_freq=1, eval_iter=100, compile=compile_, progress=False)
        state = Trainer(model, make_optimizer(model, OptimizerConfig()), data, cfg, device=torch.device("cpu")).fit()
        return [point.val_loss for point in state.history], len(graphs)

    eager_losses, _ = run(False)
    compiled_losses, compiled_graphs = run(True)
    assert compiled_graphs == 1
    assert compiled_losses == pytest.approx(eager_losses, abs=1e-5)
