"""Figures that compare decoding settings, computed on generated token ids."""

import math
from collections.abc import Sequence

Samples = Sequence[Sequence[int]]


def _ngrams(tokens: Sequence[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(samples: Samples, n: int) -> float:
    """Distinct n-grams over all n-grams of all samples (Li et al., 2016); 0.0 when there are none."""
    ngrams = [gram for tokens in samples for gram in _ngrams(tokens, n)]
    return len(set(ngrams)) / len(ngrams) if ngrams else 0.0


def repeat_ngram_rate(samples: Samples, n: int = 4) -> float:
    """Share of n-grams that repeat an earlier n-gram of the same sample; 0.0 when there are none."""
    repeated = total = 0
    for tokens in samples:
        ngrams = _ngrams(tokens, n)
        repeated += len(ngrams) - len(set(ngrams))
        total += len(ngrams)
    return repeated / total if total else 0.0


def mean_nll(logprobs: Sequence[Sequence[float]]) -> float:
    """Mean negative log-likelihood per token; NaN when there are no tokens."""
    values = [lp for row in logprobs for lp in row]
    return -sum(values) / len(values) if values else math.nan


def generation_metrics(samples: Samples, logprobs: Sequence[Sequence[float]], seconds: float) -> dict:
    """The gen/* figures of generated samples (new tokens and their log-probabilities) that
    took `seconds` to make."""
    return {
        "gen/tokens_per_sec": sum(map(len, samples)) / seconds,
        "gen/distinct_1": distinct_n(samples, 1),
        "gen/distinct_2": distinct_n(samples, 2),
        "gen/repeat_4gram_rate": repeat_ngram_rate(samples, 4),
        "gen/nll": mean_nll(logprobs),
    }
