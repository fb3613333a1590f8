"""gpt2exp's GPTModel as a Hugging Face ``transformers.GPT2LMHeadModel`` with the same weights."""

import torch

from gpt2exp.model import GPTModel


def to_hf(model: GPTModel):
    """A ``GPT2LMHeadModel`` of the same architecture holding a copy of ``model``'s weights.

    HF's attention always has a q/k/v bias: without ``qkv_bias`` it is zero, so both models
    compute the same logits.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = model.cfg
    hf_config = GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.context_length,
        n_embd=cfg.emb_dim,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        activation_function="gelu_new",
        resid_pdrop=cfg.drop_rate,
        embd_pdrop=cfg.drop_rate,
        attn_pdrop=cfg.drop_rate,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=cfg.tie_embeddings,
    )
    hf = GPT2LMHeadModel(hf_config)
    missing, unexpected = hf.load_state_dict(_hf_state_dict(model), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"} and (cfg.tie_embeddings or not missing), missing
    return hf.to(model.tok_emb.weight.device).train(model.training)


@torch.no_grad()
def _hf_state_dict(model: GPTModel) -> dict[str, torch.Tensor]:
    """HF's Conv1D keeps weights as [in, out], the transpose of ``nn.Linear``'s [out, in]."""
    cfg = model.cfg
    state = {
        "transformer.wte.weight": model.tok_emb.weight[: cfg.vocab_size],
        "transformer.wpe.weight": model.pos_emb.weight,
        "transformer.ln_f.weight": model.final_norm.weight,
        "transformer.ln_f.bias": model.final_norm.bias,
    }
    if not cfg.tie_embeddings:
        state["lm_head.weight"] = model.out_head.weight[: cfg.vocab_size]
    for i, block in enumerate(model.blocks):
        prefix = f"transformer.h.{i}."
        qkv_bias = block.attn.qkv.bias
        state |= {
            prefix + "ln_1.weight": block.norm1.weight,
            prefix + "ln_1.bias": block.norm1.bias,
            prefix + "attn.c_attn.weight": block.attn.qkv.weight.t(),
            prefix + "attn.c_attn.bias": qkv_bias if qkv_bias is not None else torch.zeros(3 * cfg.emb_dim),
            prefix + "attn.c_proj.weight": block.attn.out_proj.weight.t(),
            prefix + "attn.c_proj.bias": block.attn.out_proj.bias,
            prefix + "ln_2.weight": block.norm2.weight,
            prefix + "ln_2.bias": block.norm2.bias,
            prefix + "mlp.c_fc.weight": block.ff.fc.weight.t(),
            prefix + "mlp.c_fc.bias": block.ff.fc.bias,
            prefix + "mlp.c_proj.weight": block.ff.out_proj.weight.t(),
            prefix + "mlp.c_proj.bias": block.ff.out_proj.bias,
        }
    return {name: tensor.detach().clone().contiguous() for name, tensor in state.items()}
