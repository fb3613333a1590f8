"""Next-token selection (greedy, temperature, top-k, top-p) and KV-cached generation."""

import torch

from gpt2exp.model import GPTModel


def filter_logits(
    logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """The tutorial's rules on [batch, vocab] logits: keep logits >= the k-th largest, divide
    by the temperature, then keep the smallest set of tokens whose probability reaches top_p."""
    if top_k is not None:
        kth_largest = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True)
        cum_probs = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p.
        drop_sorted = (cum_probs - torch.softmax(sorted_logits, dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, sorted_idx, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row of [batch, vocab] logits -> [batch, 1]; temperature 0 is argmax."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = torch.softmax(filter_logits(logits.float(), temperature=temperature, top_k=top_k, top_p=top_p), dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.no_grad()
def generate(
    model: GPTModel,
    token_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Extend [batch, seq_len] prompts by up to ``max_new_tokens`` tokens.

    The context is cropped to the model's last ``context_length`` tokens. With ``use_cache``
    each step feeds only the newest token; once the window is full it slides, which with
    absolute positions means recomputing it, so the output equals the uncached one. A row that
    emits ``eos_id`` keeps emitting it; generation stops when every row has.
    """
    context_length = model.cfg.context_length
    was_training = model.training
    model.eval()
    past_kv = None
    finished = torch.zeros(token_ids.size(0), 1, dtype=torch.bool, device=token_ids.device)
    for _ in range(max_new_tokens):
        if past_kv is None:
            logits, past_kv = model(token_ids[:, -context_length:], use_cache=True)
        else:
            logits, past_kv = model(token_ids[:, -1:], past_kv=past_kv, use_cache=True)
        if not use_cache or past_kv[0][0].size(2) >= context_length:
            past_kv = None
        new_token = next_token(logits[:, -1], temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        if eos_id is not None:
            new_token = new_token.masked_fill(finished, eos_id)
            finished |= new_token == eos_id
        token_ids = torch.cat((token_ids, new_token), dim=1)
        if eos_id is not None and bool(finished.all()):
            break
    model.train(was_training)
    return token_ids
