"""`optimizer.schedule`: each curve, step by step, against its formula written out here."""

import math

import pytest

from gpt2exp.config import OptimizerConfig
from gpt2exp.errors import UserError
from gpt2exp.training.schedules import lr_multiplier

TOTAL, WARMUP, MIN = 50, 5, 0.1


def curve(schedule: str, **keys) -> list[float]:
    cfg = OptimizerConfig(schedule=schedule, warmup_steps=WARMUP, min_lr_ratio=MIN, **keys)
    return [lr_multiplier(step, TOTAL, cfg) for step in range(TOTAL)]


def warmup(step: int) -> float:
    return (step + 1) / WARMUP


def test_constant_is_one_after_the_warmup():
    assert curve("constant") == [warmup(s) for s in range(WARMUP)] + [1.0] * (TOTAL - WARMUP)


def test_cosine_falls_from_one_to_the_minimum_over_the_steps_after_warmup():
    expected = [warmup(s) if s < WARMUP else
                MIN + (1 - MIN) * (1 + math.cos(math.pi * (s - WARMUP) / (TOTAL - WARMUP))) / 2 for s in range(TOTAL)]
    assert curve("cosine") == pytest.approx(expected, abs=1e-12)


def test_linear_falls_in_a_straight_line_from_one_to_the_minimum():
    expected = [warmup(s) if s < WARMUP else 1 - (1 - MIN) * (s - WARMUP) / (TOTAL - WARMUP) for s in range(TOTAL)]
    assert curve("linear") == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("decay_fraction", [0.2, 0.5, 1.0])
def test_wsd_holds_one_then_decays_linearly_over_its_last_fraction(decay_fraction):
    start = TOTAL * (1 - decay_fraction)
    expected = [warmup(s) if s < WARMUP else 1.0 if s < start else 1 - (1 - MIN) * (s - start) / (TOTAL - start)
                for s in range(TOTAL)]
    got = curve("wsd", decay_fraction=decay_fraction)
    assert got == pytest.approx(expected, abs=1e-12)


def test_wsd_of_fifty_steps_decays_over_its_last_ten():
    got = curve("wsd", decay_fraction=0.2)
    assert got[WARMUP:41] == [1.0] * (41 - WARMUP)
    assert all(later < earlier for earlier, later in zip(got[40:], got[41:]))
    assert got[-1] == pytest.approx(1 - (1 - MIN) * 9 / 10)


def test_a_decay_fraction_outside_zero_to_one_names_the_key():
    with pytest.raises(UserError, match=r"^optimizer.decay_fraction=0 "):
        OptimizerConfig(decay_fraction=0)
