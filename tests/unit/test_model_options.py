"""The model options beyond GPT-2 (model.pos_emb, norm, qk_norm, mlp, zero_init_proj, bias,
logit_softcap): each against a plain reference written here, and with the KV cache, the inference
layout, the parameter and FLOP counts, the fused loss, torch.compile and export."""

import math

import helpers
import pytest
import torch
import torch.nn.functional as F

from gpt2exp.config import ModelConfig
from gpt2exp.errors import UserError
from gpt2exp.evaluation.sliding_windows import score_text
from gpt2exp.modeling import decoding, inference_layout, loss
from gpt2exp.modeling.decoding import generate
from gpt2exp.modeling.flops import train_flops_per_token
from gpt2exp.modeling.hf_format import write_hf_folder
from gpt2exp.modeling.inference_layout import PackedLinear, to_inference_layout
from gpt2exp.modeling.model import GPTModel, apply_rotary, rotary_angles
from gpt2exp.modeling.trained import load_trained_model

SHAPE = {"context_length": 16, "emb_dim": 32, "n_heads": 4, "n_layers": 2, "drop_rate": 0.0, "pad_vocab_to": 64}
OPTIONS = {
    "rope": {"pos_emb": "rope"},
    "rope-base-100": {"pos_emb": "rope", "rope_base": 100.0},
    "rmsnorm": {"norm": "rmsnorm"},
    "qk-norm": {"qk_norm": True},
    "relu2": {"mlp": "relu2"},
    "swiglu": {"mlp": "swiglu"},
    "zero-init-proj": {"zero_init_proj": True},
    "no-bias": {"bias": False},
    "softcap": {"logit_softcap": 2.0},
    "all": {"pos_emb": "rope", "norm": "rmsnorm", "qk_norm": True, "mlp": "relu2", "zero_init_proj": True,
            "bias": False, "logit_softcap": 2.0, "tie_embeddings": False},
    "all-swiglu": {"pos_emb": "rope", "norm": "rmsnorm", "qk_norm": True, "mlp": "swiglu", "logit_softcap": 2.0},
}


def perturbed(cfg: ModelConfig) -> GPTModel:
    """A model whose every weight (norm weights, biases and zero-initialised ones too) is random."""
    torch.manual_seed(0)
    model = GPTModel(cfg).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.3 * torch.randn_like(param))
    return model


def ref_norm(x, norm, cfg):
    if cfg.norm == "rmsnorm":
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + cfg.layer_norm_epsilon) * norm.weight
    out = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + cfg.layer_norm_epsilon)
    return out * norm.weight + (norm.bias if norm.bias is not None else 0)


def ref_rotary(x, positions, base):
    """RoFormer's rotation as complex numbers: the halves of each head are the real and
    imaginary parts, pair i turned by position * base^(-2i / head_dim)."""
    half = x.size(-1) // 2
    freqs = base ** (-torch.arange(0, 2 * half, 2, dtype=torch.float64) / (2 * half))
    turn = torch.polar(torch.ones(len(positions), half, dtype=torch.float64), positions[:, None].double() * freqs)
    z = torch.complex(x[..., :half].double(), x[..., half:].double()) * turn
    return torch.cat((z.real, z.imag), dim=-1).to(x.dtype)


def linear(x, layer):
    return x @ layer.weight.T + (layer.bias if layer.bias is not None else 0)


def ref_logits(model: GPTModel, tokens: torch.Tensor) -> torch.Tensor:
    """Logits of ``model``'s weights, computed plainly from the options' definitions."""
    cfg = model.cfg
    batch, seq = tokens.shape
    heads, head_dim = cfg.n_heads, cfg.emb_dim // cfg.n_heads
    positions = torch.arange(seq)
    x = model.tok_emb.weight[tokens]
    if cfg.pos_emb == "learned":
        x = x + model.pos_emb.weight[positions]
    for block in model.blocks:
        q, k, v = linear(ref_norm(x, block.norm1, cfg), block.attn.qkv).split(cfg.emb_dim, dim=-1)
        q, k, v = (t.reshape(batch, seq, heads, head_dim).transpose(1, 2) for t in (q, k, v))
        if cfg.qk_norm:
            q, k = (t / torch.sqrt(t.pow(2).mean(-1, keepdim=True) + cfg.layer_norm_epsilon) for t in (q, k))
        if cfg.pos_emb == "rope":
            q, k = ref_rotary(q, positions, cfg.rope_base), ref_rotary(k, positions, cfg.rope_base)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(head_dim)
        scores = scores.masked_fill(torch.ones(seq, seq, dtype=torch.bool).triu(1), float("-inf"))
        attn = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, seq, cfg.emb_dim)
        x = x + linear(attn, block.attn.out_proj)
        h = linear(ref_norm(x, block.norm2, cfg), block.ff.fc)
        if cfg.mlp == "gelu":
            h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
        elif cfg.mlp == "relu2":
            h = torch.clamp(h, min=0) ** 2
        else:
            gate, up = h[..., : cfg.mlp_hidden_dim], h[..., cfg.mlp_hidden_dim :]
            h = gate * torch.sigmoid(gate) * up
        x = x + linear(h, block.ff.out_proj)
    logits = ref_norm(x, model.final_norm, cfg) @ model.out_head.weight[: cfg.vocab_size].T
    if cfg.logit_softcap is not None:
        logits = cfg.logit_softcap * torch.tanh(logits / cfg.logit_softcap)
    return logits


def test_rotary_equals_the_complex_number_rotation():
    x = torch.randn(2, 3, 7, 8)
    positions = torch.arange(5, 12)
    ours = apply_rotary(x, rotary_angles(positions, 8, 500.0))
    torch.testing.assert_close(ours, ref_rotary(x, positions, 500.0), atol=1e-5, rtol=0)
    assert not torch.allclose(ours, x)


@pytest.mark.parametrize("options", list(OPTIONS.values()) + [{}], ids=[*OPTIONS, "gpt2"])
def test_each_option_computes_its_reference(options):
    """Logits, and the fused loss, as the reference computes them from the same weights."""
    model = perturbed(ModelConfig(**SHAPE, **options))
    tokens = torch.randint(0, 50257, (2, 16))
    reference = ref_logits(model, tokens)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), reference, atol=2e-5, rtol=1e-5)
        ours = model(tokens[:, :-1], targets=tokens[:, 1:])
    expected = F.cross_entropy(reference[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_softcapped_fused_loss_and_gradients_equal_autograds(monkeypatch, dtype):
    """head_cross_entropy with a soft cap, in several chunks and softmax blocks (vocabulary padding masked), against
    autograd through the plain formula (under bf16 autocast: the same loss within its rounding)."""
    monkeypatch.setitem(loss.CHUNK_ROWS, "cpu", 5)
    monkeypatch.setitem(loss.SOFTMAX_ROWS, "cpu", 2)
    torch.manual_seed(0)
    hidden = torch.randn(13, 16, requires_grad=True)
    weight = torch.randn(40, 16, requires_grad=True)
    targets = torch.randint(0, 37, (13,))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype != torch.float32):
        ours = loss.head_cross_entropy(hidden, weight, targets, vocab_size=37, softcap=3.0)
        ours_grads = torch.autograd.grad(ours, (hidden, weight))
        logits = (hidden @ weight.T)[:, :37].float()
        expected = F.cross_entropy(3.0 * torch.tanh(logits / 3.0), targets)
        expected_grads = torch.autograd.grad(expected, (hidden, weight))
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 0.03, "rtol": 0.03}
    torch.testing.assert_close(ours, expected, **tolerance)
    for got, want in zip(ours_grads, expected_grads):
        torch.testing.assert_close(got, want, **tolerance)


@pytest.mark.parametrize("options", list(OPTIONS.values()), ids=list(OPTIONS))
def test_parameter_and_flop_counts_follow_the_options(options):
    cfg = ModelConfig(**SHAPE, **options)
    model = GPTModel(cfg)
    assert model.num_parameters() == cfg.num_parameters()
    blocks = sum(p.numel() for p in model.blocks.parameters()) + sum(p.numel() for p in model.final_norm.parameters())
    head = cfg.vocab_size * cfg.emb_dim
    assert train_flops_per_token(model, 16) == 6 * (blocks + head) + 12 * 2 * 32 * 16
    names = [name for name, _ in model.named_parameters()]
    assert any(name.endswith(".bias") for name in names) == cfg.bias
    assert (model.pos_emb is None) == (cfg.pos_emb == "rope")


def test_gpt2_small_keeps_its_parameter_count_and_swiglu_nearly_keeps_it():
    small = {"context_length": 1024, "emb_dim": 768, "n_heads": 12, "n_layers": 12}
    assert ModelConfig(**small).num_parameters() == 124_439_808
    # 8/3 x 768 = 2048 wide: the same weights as GELU's 3072, and 1024 more biases per layer
    assert ModelConfig(**small, mlp="swiglu").num_parameters() == 124_439_808 + 12 * 1024
    swiglu = ModelConfig(**small, mlp="swiglu", bias=False, pos_emb="rope")
    assert GPTModel(swiglu).num_parameters() == swiglu.num_parameters()


def test_zero_init_proj_starts_each_block_as_the_identity():
    model = GPTModel(ModelConfig(**SHAPE, zero_init_proj=True)).eval()
    tokens = torch.randint(0, 50257, (1, 16))
    for block in model.blocks:
        assert not block.attn.out_proj.weight.any() and not block.ff.out_proj.weight.any()
        assert block.ff.fc.weight.any()
    with torch.no_grad():
        x = model.tok_emb(tokens) + model.pos_emb(torch.arange(16))
        torch.testing.assert_close(model.hidden_states(tokens), model.final_norm(x), atol=0, rtol=0)


def test_no_bias_is_a_biased_model_with_zero_biases():
    biased = perturbed(ModelConfig(**SHAPE))
    unbiased = GPTModel(ModelConfig(**SHAPE, bias=False)).eval()
    weights = {name: t for name, t in biased.state_dict().items() if not name.endswith(".bias")}
    unbiased.load_state_dict(weights)
    with torch.no_grad():
        for name, param in biased.named_parameters():
            if name.endswith(".bias"):
                param.zero_()
        tokens = torch.randint(0, 50257, (2, 16))
        torch.testing.assert_close(unbiased(tokens), biased(tokens), atol=1e-6, rtol=0)


@pytest.mark.parametrize("options", list(OPTIONS.values()), ids=list(OPTIONS))
def test_cached_decoding_equals_recomputing_with_each_option(options):
    """Greedy decoding with the KV cache (rotary positions offset by the cache's length, padded
    rows, past the context where the window slides) picks the tokens recomputing does."""
    model = perturbed(ModelConfig(**SHAPE, **options))
    prompts = [[5, 6], [7, 8, 9, 10, 11, 12, 13]]
    runs = [generate(model, prompts, max_new_tokens=20, temperature=0.0, use_cache=use_cache)
            for use_cache in (True, False)]
    assert runs[0].new_tokens == runs[1].new_tokens
    torch.testing.assert_close(torch.tensor(runs[0].logprobs), torch.tensor(runs[1].logprobs), atol=1e-4, rtol=0)


@pytest.mark.parametrize("use_cache", [True, False], ids=["cached", "recomputed"])
@pytest.mark.parametrize("options", [OPTIONS["softcap"], OPTIONS["all"]], ids=["softcap", "all"])
def test_sampled_tokens_log_probs_are_the_references(options, use_cache):
    """generate's log-probs (temperature 1) are the reference model's, soft cap included."""
    model = perturbed(ModelConfig(**SHAPE, **options))
    out = generate(model, [[3, 4, 5]], max_new_tokens=10, temperature=1.0, use_cache=use_cache,
                   generator=torch.Generator().manual_seed(1))
    tokens = torch.tensor(out.token_ids)
    expected = torch.log_softmax(ref_logits(model, tokens[:, :-1]), dim=-1)[0, 2:].gather(1, tokens[0, 3:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(out.logprobs[0]), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("options", [OPTIONS["all"], OPTIONS["all-swiglu"]], ids=["all", "all-swiglu"])
def test_fixed_shape_graph_step_equals_recomputing_with_every_option(options, monkeypatch):
    """``decode_hidden`` (the step a CUDA graph captures), run on the CPU as it is."""
    replays = []

    def capture(step, device):
        return lambda: replays.append(1) or step()

    monkeypatch.setitem(decoding.GRAPH_CAPTURES, "cpu", capture)
    model = perturbed(ModelConfig(**SHAPE, **options))
    prompts = [[5, 6], [7, 8, 9, 10, 11, 12, 13], [14, 15, 16, 17]]
    runs = [generate(model, prompts, max_new_tokens=20, temperature=0.0, use_cache=use_cache)
            for use_cache in (True, False)]
    assert len(replays) == 16 - 7
    assert runs[0].new_tokens == runs[1].new_tokens
    torch.testing.assert_close(torch.tensor(runs[0].logprobs), torch.tensor(runs[1].logprobs), atol=1e-4, rtol=0)


@pytest.mark.parametrize("packed", [True, False], ids=["onednn-packed", "transposed"])
@pytest.mark.parametrize("options", [OPTIONS["all"], OPTIONS["all-swiglu"]], ids=["all", "all-swiglu"])
def test_inference_layout_packs_every_option_alike(options, packed, monkeypatch):
    monkeypatch.setattr(inference_layout, "choose_layout", lambda model, use, weights: "packed" if packed else "transposed")
    model = perturbed(ModelConfig(**SHAPE, **options))
    fast = GPTModel(model.cfg).eval()
    fast.load_state_dict(model.state_dict())
    to_inference_layout(fast)
    linears = [m for m in fast.modules() if isinstance(m, (torch.nn.Linear, PackedLinear))]
    assert all(isinstance(m, PackedLinear) == packed for m in linears) and len(linears) == 4 * 2 + 1
    prompts = [[1, 2, 3, 4], [5, 6]]
    ours, reference = (generate(m, prompts, max_new_tokens=20, temperature=0.0) for m in (fast, model))
    assert ours.new_tokens == reference.new_tokens
    torch.testing.assert_close(torch.tensor(ours.logprobs), torch.tensor(reference.logprobs), atol=1e-4, rtol=0)
    text = torch.randint(0, 50257, (60,))
    assert score_text(fast, text, stride=8).mean_nll == pytest.approx(score_text(model, text, stride=8).mean_nll,
                                                                       rel=1e-6)


def test_score_text_uses_the_soft_cap():
    model = perturbed(ModelConfig(**SHAPE, logit_softcap=1.0))
    text = torch.randint(0, 50257, (17,))
    expected = F.cross_entropy(ref_logits(model, text[None, :-1])[0], text[1:])
    assert score_text(model, text, stride=16).mean_nll == pytest.approx(expected.item(), rel=1e-5)


def test_compiled_loss_and_gradients_equal_eager_with_every_option():
    """torch.compile takes the plain loss (no chunk loop) and the traced model: same loss, same
    gradients; with sizes traced as symbols too (dynamo makes them so once a shape changes)."""
    model = perturbed(ModelConfig(**SHAPE, **OPTIONS["all"])).train()
    tokens = torch.randint(0, 50257, (2, 17))
    compiled = torch.compile(model, backend="eager", fullgraph=True, dynamic=True)
    results = []
    for run in (model, compiled):
        model.zero_grad()
        value = run(tokens[:, :-1], targets=tokens[:, 1:])
        value.backward()
        results.append((value.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-5)
    for got, want in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("options", "named"),
    [({"pos_emb": "rope"}, "model.pos_emb=rope"), ({"norm": "rmsnorm"}, "model.norm=rmsnorm"),
     ({"qk_norm": True}, "model.qk_norm=True"), ({"mlp": "relu2"}, "model.mlp=relu2"),
     ({"mlp": "swiglu"}, "model.mlp=swiglu"), ({"bias": False}, "model.bias=False"),
     ({"logit_softcap": 30.0}, "model.logit_softcap=30.0")],
)
def test_export_refuses_what_gpt2_cannot_represent_before_writing(options, named, tmp_path):
    model = GPTModel(ModelConfig(**SHAPE, **options))
    with pytest.raises(UserError, match=f"cannot have {named}: transformers' GPT-2"):
        write_hf_folder(model, tmp_path / "out" / "hf")
    assert not any(tmp_path.iterdir())


def test_zero_init_proj_is_still_gpt2_and_exports(tmp_path):
    assert ModelConfig(**SHAPE, zero_init_proj=True).beyond_gpt2() is None
    assert (write_hf_folder(GPTModel(ModelConfig(**SHAPE, zero_init_proj=True)), tmp_path / "hf") / "config.json").is_file()


@pytest.mark.parametrize(
    ("values", "message"),
    [({"pos_emb": "alibi"}, "model.pos_emb='alibi' is not allowed: one of learned, rope"),
     ({"norm": "batchnorm"}, "model.norm='batchnorm' is not allowed: one of layernorm, rmsnorm"),
     ({"mlp": "geglu"}, "model.mlp='geglu' is not allowed: one of gelu, relu2, swiglu"),
     ({"rope_base": 1.0}, "model.rope_base=1.0 is not allowed: must be > 1 and finite"),
     ({"logit_softcap": 0.0}, "model.logit_softcap=0.0 is not allowed: must be > 0 and finite, or null (off)"),
     ({"pos_emb": "rope", "emb_dim": 36, "n_heads": 4}, "model.pos_emb='rope' is not allowed: needs an even head width")],
)
def test_option_values_are_checked_in_one_line(values, message):
    with pytest.raises(UserError, match=f"^{message}".replace("(", r"\(").replace(")", r"\)")):
        ModelConfig(**(SHAPE | values))


EVERY_OPTION = ["model.pos_emb=rope", "model.norm=rmsnorm", "model.qk_norm=true", "model.mlp=relu2",
                "model.zero_init_proj=true", "model.bias=false", "model.logit_softcap=15.0"]


def test_a_run_with_every_option_trains_resumes_generates_and_refuses_export(run_module, text_file, tmp_path):
    """python -m gpt2exp.train with every option on, resumed; generate reads its checkpoint;
    export refuses it in one line, writing nothing."""
    args = [*helpers.TINY, "data=text", f"data.path={text_file}", "trainer.eval_freq=2", "logger=none", *EVERY_OPTION]
    result = run_module("gpt2exp.train", *args, "trainer.max_steps=2")
    assert result.returncode == 0, result.stderr
    [run_dir] = helpers.run_folders(tmp_path)
    recorded = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["config"]["model"]
    assert recorded | {"pos_emb": "rope", "qk_norm": True, "bias": False, "logit_softcap": 15.0} == recorded
    result = run_module("gpt2exp.train", *args, "trainer.max_steps=4", f"trainer.resume={run_dir}")
    assert result.returncode == 0, result.stderr
    assert f"resuming {run_dir}" in result.stdout
    result = run_module("gpt2exp.generate", f"ckpt={run_dir}", "prompt=Line 3:", "decoding.max_new_tokens=5")
    assert result.returncode == 0, result.stderr
    result = run_module("gpt2exp.export", f"ckpt={run_dir}", f"out={tmp_path / 'hf'}")
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: out: a Hugging Face GPT-2 folder cannot have model.pos_emb=rope: "
                                     "transformers' GPT-2 (GPT2LMHeadModel) has no such option")
    assert not (tmp_path / "hf").exists()


def test_model_init_from_a_hugging_face_gpt2_refuses_an_option_it_lacks(run_module, text_file, tmp_path):
    write_hf_folder(GPTModel(ModelConfig(**SHAPE)), tmp_path / "hf")
    result = run_module("gpt2exp.train", *helpers.TINY, "data=text", f"data.path={text_file}", "logger=none",
                        f"model.init={tmp_path / 'hf'}", "model.mlp=swiglu", "trainer.max_steps=1")
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: model.init: a Hugging Face GPT-2 cannot have model.mlp=swiglu: "
                                     "transformers' GPT-2 (GPT2LMHeadModel) has no such option")
    assert not helpers.run_folders(tmp_path) or not list(tmp_path.rglob("*.pt"))


NEW_MODEL_KEYS = ("layer_norm_epsilon", "pos_emb", "rope_base", "norm", "qk_norm", "mlp", "zero_init_proj", "bias",
                  "logit_softcap", "lora")


def test_a_checkpoint_written_before_the_new_model_keys_resumes_and_loads(train_run, run_module):
    """A run whose checkpoints' model config lacks the keys added since (they were GPT-2's then)
    resumes by its folder and by trainer.resume=auto, and generates."""
    for path in (train_run / "checkpoints").glob("step-*.pt"):
        checkpoint = torch.load(path, weights_only=True)
        checkpoint["config"]["model"] = {k: v for k, v in checkpoint["config"]["model"].items()
                                         if k not in NEW_MODEL_KEYS}
        torch.save(checkpoint, path)
    corpus = checkpoint["config"]["data"]["path"]  # the shared run's: `auto` looks for this config
    args = [*helpers.TINY, "data=text", f"data.path={corpus}", "trainer.eval_freq=2", "logger=none",
            "trainer.max_steps=6"]
    for resume in ("auto", str(train_run)):
        result = run_module("gpt2exp.train", *args, f"trainer.resume={resume}")
        assert result.returncode == 0, result.stderr
        assert f"resuming {train_run}" in result.stdout, resume
        assert "differs" not in result.stdout + result.stderr
    model, _ = load_trained_model(train_run / "checkpoints" / "last.pt")
    assert model.cfg.layer_norm_epsilon == 1e-5 and model.cfg.pos_emb == "learned"


def test_activation_checkpointing_recomputes_every_option_alike():
    cfg = ModelConfig(**SHAPE, **OPTIONS["all"])
    plain = perturbed(cfg).train()
    recomputed = GPTModel(cfg, activation_checkpointing=True).train()
    recomputed.load_state_dict(plain.state_dict())
    tokens = torch.randint(0, 50257, (2, 17))
    for model in (plain, recomputed):
        model(tokens[:, :-1], targets=tokens[:, 1:]).backward()
    for (name, want), got in zip(plain.named_parameters(), recomputed.parameters()):
        torch.testing.assert_close(got.grad, want.grad, atol=1e-6, rtol=1e-5, msg=name)
