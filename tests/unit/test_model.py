import math

import pytest
import torch
import torch.nn.functional as F

from gpt2exp.config import ModelConfig
from gpt2exp.modeling.model import GPTModel, KVCache

TINY = ModelConfig(context_length=32, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0, qkv_bias=False)


def test_small_has_openai_parameter_count():
    model = GPTModel(ModelConfig(context_length=1024, emb_dim=768, n_heads=12, n_layers=12, qkv_bias=True))
    assert model.num_parameters() == 124_439_808
    assert model.out_head.weight is model.tok_emb.weight


@pytest.mark.parametrize("tied", [True, False])
def test_parameter_count_and_flops_count_the_head_once(tied):
    from gpt2exp.modeling.flops import train_flops_per_token

    cfg = ModelConfig(context_length=64, emb_dim=64, n_heads=4, n_layers=2, tie_embeddings=tied, pad_vocab_to=64)
    model = GPTModel(cfg)
    assert model.num_parameters() == cfg.num_parameters()
    assert (model.out_head.weight is model.tok_emb.weight) == tied
    blocks = sum(p.numel() for p in model.blocks.parameters()) + sum(p.numel() for p in model.final_norm.parameters())
    head = cfg.vocab_size * cfg.emb_dim  # without the padding rows
    assert train_flops_per_token(model, 64) == 6 * (blocks + head) + 12 * 2 * 64 * 64


def test_weight_init_is_gpt2s_or_pytorchs():
    torch.manual_seed(0)
    gpt2 = GPTModel(ModelConfig(context_length=64, emb_dim=256, n_heads=4, n_layers=2))
    default = GPTModel(ModelConfig(context_length=64, emb_dim=256, n_heads=4, n_layers=2, weight_init="torch_default"))
    assert gpt2.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert default.tok_emb.weight.std().item() == pytest.approx(1.0, rel=0.05)
    bound = 1 / math.sqrt(256)  # nn.Linear's default: uniform in +-1/sqrt(fan_in)
    fc = default.blocks[0].ff.fc
    assert fc.weight.abs().max().item() <= bound and fc.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert gpt2.blocks[0].ff.fc.bias.abs().max().item() == 0 and fc.bias.abs().max().item() > 0


def test_untrained_loss_is_near_uniform():
    torch.manual_seed(0)
    model = GPTModel(ModelConfig(context_length=128, emb_dim=128, n_heads=4, n_layers=4)).eval()
    tokens = torch.randint(0, 50257, (4, 129))
    with torch.no_grad():
        loss = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
    assert math.log(50257) - 0.2 < loss.item() < 11.0


def test_attention_is_causal():
    torch.manual_seed(0)
    model = GPTModel(TINY).eval()
    tokens = torch.randint(0, 50257, (1, 16))
    changed = tokens.clone()
    changed[0, 10:] = 7
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_kv_cache_matches_full_forward():
    torch.manual_seed(0)
    model = GPTModel(TINY).eval()
    tokens = torch.randint(0, 50257, (2, 20))
    with torch.no_grad():
        full = model(tokens)
        cache = KVCache(TINY, batch_size=2)
        first = model(tokens[:, :12], cache)
        second = model(tokens[:, 12:15], cache)
        third = model(tokens[:, 15:], cache)
        assert cache.length == 20
    torch.testing.assert_close(torch.cat((first, second, third), dim=1), full, atol=1e-5, rtol=1e-5)


def test_rejects_sequences_longer_than_the_context():
    model = GPTModel(TINY)
    with pytest.raises(ValueError, match="context_length=32"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_left_padding_is_invisible():
    torch.manual_seed(0)
    model = GPTModel(TINY).eval()
    short, long = torch.randint(0, 50257, (1, 5)), torch.randint(0, 50257, (1, 9))
    batch = torch.cat((torch.cat((torch.zeros(1, 4, dtype=torch.long), short), dim=1), long))
    with torch.no_grad():
        padded = model(batch, pad=torch.tensor([4, 0]))
        cache = KVCache(TINY, batch_size=2)
        model(batch[:, :7], cache, pad=torch.tensor([4, 0]))
        cached_tail = model(batch[:, 7:], cache, pad=torch.tensor([4, 0]))
        alone_short, alone_long = model(short), model(long)
    torch.testing.assert_close(padded[0, 4:], alone_short[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded[1], alone_long[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached_tail, padded[:, 7:], atol=1e-5, rtol=1e-5)


def test_fixed_shape_decode_step_matches_the_cache_it_extends():
    """decode_hidden (what a CUDA graph replays) equals hidden_states with a KV cache, padding included."""
    torch.manual_seed(0)
    model = GPTModel(TINY).eval()
    batch, pad = torch.randint(0, 50257, (2, 12)), torch.tensor([3, 0])
    with torch.no_grad():
        expected = model.hidden_states(batch, pad=pad)[:, 8:]
        cache = KVCache(TINY, batch_size=2)
        model.hidden_states(batch[:, :8], cache, pad=pad)
        steps = [model.decode_hidden(batch[:, i : i + 1], torch.tensor(i), cache, pad) for i in range(8, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, atol=1e-5, rtol=1e-5)


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    torch.manual_seed(0)
    plain = GPTModel(ModelConfig(**{**TINY.__dict__, "drop_rate": 0.1}))
    recomputing = GPTModel(plain.cfg, activation_checkpointing=True)
    recomputing.load_state_dict(plain.state_dict())
    tokens = torch.randint(0, 50257, (2, 16))
    losses, grads = [], []
    for model in (plain, recomputing):
        torch.manual_seed(1)  # the same dropout masks, which checkpointing replays in the recomputation
        loss = model(tokens, targets=tokens)
        loss.backward()
        losses.append(loss)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)
