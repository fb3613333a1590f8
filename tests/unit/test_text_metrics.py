import math

import pytest

from gpt2exp.modeling.text_metrics import distinct_n, mean_nll, repeat_ngram_rate


def test_distinct_n_counts_unique_ngrams_across_samples():
    samples = [[1, 2, 3, 1, 2], [1, 2, 4]]
    assert distinct_n(samples, 1) == pytest.approx(4 / 8)
    assert distinct_n(samples, 2) == pytest.approx(4 / 6)  # (1,2) (2,3) (3,1) (1,2) | (1,2) (2,4)
    assert distinct_n([[1]], 2) == 0.0


def test_repeat_rate_counts_4grams_seen_earlier_in_the_same_sample():
    looping = [5, 6, 7, 8] * 3  # 9 four-grams, 4 distinct
    assert repeat_ngram_rate([looping]) == pytest.approx(5 / 9)
    assert repeat_ngram_rate([[1, 2, 3, 4], [1, 2, 3, 4]]) == 0.0
    assert repeat_ngram_rate([[1, 2]]) == 0.0


def test_mean_nll_averages_over_all_tokens():
    assert mean_nll([[math.log(0.5)], [math.log(0.25), math.log(0.5)]]) == pytest.approx(math.log(2) * 4 / 3)
    assert math.isnan(mean_nll([[], []]))
