"""gpt2exp's GPTModel as a Hugging Face ``transformers.GPT2LMHeadModel`` with the same weights:
the baseline the benchmarks hold gpt2exp against. transformers (the optional ``bench`` extra,
seconds to import) is imported on use."""

from gpt2exp.modeling.hf_format import hf_config, to_hf_state_dict
from gpt2exp.modeling.model import GPTModel


def to_hf(model: GPTModel):
    """A ``GPT2LMHeadModel`` of the same architecture holding a copy of ``model``'s weights.

    HF's attention always has a q/k/v bias: without ``qkv_bias`` it is zero, so both models
    compute the same logits.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2LMHeadModel(GPT2Config(**hf_config(model.cfg)))
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(model), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"} and (model.cfg.tie_embeddings or not missing), missing
    return hf.to(model.tok_emb.weight.device).train(model.training)  # type: ignore[arg-type]  # transformers types .to() as a decorator's wrapper
