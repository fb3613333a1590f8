"""Held-out perplexity the standard way: a model with a fixed context scores a long text through
sliding windows (the method of the transformers perplexity guide), each token once."""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from gpt2exp.devices import FP32, Precision
from gpt2exp.modeling.model import GPTModel

STRIDE = 512  # tokens between window starts unless given (the transformers guide's), capped at the context


def default_stride(context_length: int) -> int:
    return min(STRIDE, context_length)


@dataclass
class Score:
    """What a text scored: `tokens` predicted (all but the first), their summed NLL in nats."""

    tokens: int
    nll_sum: float

    @property
    def mean_nll(self) -> float:
        return self.nll_sum / self.tokens

    @property
    def perplexity(self) -> float:
        """exp(mean NLL); inf past the largest float (a mean NLL above ~709.78 nats)."""
        try:
            return math.exp(self.mean_nll)
        except OverflowError:
            return math.inf

    def bits_per_byte(self, n_bytes: int) -> float:
        """Summed NLL in bits over the text's UTF-8 bytes (comparable across tokenizers)."""
        return self.nll_sum / math.log(2) / n_bytes


def windows(n_tokens: int, context_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored) of each window over `n_tokens` tokens: windows of up to
    `context_length + 1` tokens (`context_length` inputs, the targets shifted one right)
    starting every `stride` tokens. Each token from the second on is scored in exactly one
    window: in the first, after all the tokens before it; in later ones, after at least
    `context_length - stride + 1` tokens of context (stride = context_length: disjoint windows)."""
    spans, scored_to = [], 1
    for begin in range(0, max(1, n_tokens - 1), stride):
        end = min(begin + context_length + 1, n_tokens)
        spans.append((begin, end, scored_to))
        scored_to = end
        if end == n_tokens:
            break
    return spans


@torch.inference_mode()
def score_text(
    model: GPTModel, token_ids: torch.Tensor, *, stride: int, batch_size: int = 4, precision: Precision = FP32,
    progress: str | None = None,
) -> Score:
    """The summed NLL of 1-D `token_ids` under `model`, by `windows` (stride <= context_length).
    `progress`: the label of a bar over the tokens scored, drawn while stderr is a terminal."""
    if not 1 <= stride <= model.cfg.context_length:
        raise ValueError(f"stride {stride} must be in [1, context_length={model.cfg.context_length}]")
    device = model.tok_emb.weight.device
    was_training = model.training
    model.eval()
    nll_sum, tokens = 0.0, 0
    spans = windows(len(token_ids), model.cfg.context_length, stride)
    bar = tqdm(total=len(token_ids) - 1, desc=progress, unit="tok", unit_scale=True, dynamic_ncols=True,
               disable=None if progress else True)
    # Windows of one length run as a batch (all but the last are full).
    for length in dict.fromkeys(end - begin for begin, end, _ in spans):
        same = [span for span in spans if span[1] - span[0] == length]
        for first in range(0, len(same), batch_size):
            batch = same[first : first + batch_size]
            rows = torch.stack([token_ids[begin:end] for begin, end, _ in batch]).to(device)
            with precision.autocast():
                hidden = model.hidden_states(rows[:, :-1])
            for row, (_, end, scored_from) in enumerate(batch):
                keep = end - scored_from  # the last `keep` targets of the window
                logits = model.soft_cap(model.out_head(hidden[row, -keep:])[:, : model.cfg.vocab_size].float())
                nll_sum += F.cross_entropy(logits, rows[row, -keep:], reduction="sum").item()
                tokens += keep
                bar.update(keep)
    bar.close()
    model.train(was_training)
    return Score(tokens=tokens, nll_sum=nll_sum)
