"""The LR schedule is a pure function: exact values at chosen steps."""

from __future__ import annotations

import doctest
import math

import pytest

from lit_llm.training import schedules
from lit_llm.training.schedules import lr_multiplier, resolve_warmup_steps


def test_doctests():
    assert doctest.testmod(schedules).failed == 0


@pytest.mark.parametrize("decay", ["linear", "cosine", "constant", "inverse_sqrt"])
def test_warmup_is_linear_from_one_over_w_plus_one(decay):
    # Step 0 already trains: 1/5, 2/5, 3/5, 4/5, then the decay starts at 1.
    got = [lr_multiplier(s, warmup_steps=4, total_steps=20, decay=decay) for s in range(5)]
    assert got == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])


def test_linear_decay_exact():
    # warmup 2, total 12: decay spans steps 2..12, so step 7 is halfway.
    assert lr_multiplier(7, warmup_steps=2, total_steps=12) == pytest.approx(0.5)
    assert lr_multiplier(11, warmup_steps=2, total_steps=12) == pytest.approx(0.1)
    assert lr_multiplier(12, warmup_steps=2, total_steps=12) == 0.0
    assert lr_multiplier(50, warmup_steps=2, total_steps=12) == 0.0  # stays at the floor past the end


def test_min_lr_ratio_is_the_floor():
    assert lr_multiplier(7, warmup_steps=2, total_steps=12, min_lr_ratio=0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_multiplier(12, warmup_steps=2, total_steps=12, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert lr_multiplier(12, warmup_steps=2, total_steps=12, decay="cosine", min_lr_ratio=0.1) == pytest.approx(0.1)


def test_cosine_exact():
    assert lr_multiplier(5, warmup_steps=0, total_steps=10, decay="cosine") == pytest.approx(0.5)
    quarter = 0.5 * (1 + math.cos(math.pi * 0.25))
    assert lr_multiplier(3, warmup_steps=1, total_steps=9, decay="cosine") == pytest.approx(quarter)


def test_constant_after_warmup():
    assert [lr_multiplier(s, warmup_steps=1, total_steps=5, decay="constant") for s in (1, 4, 9)] == [1.0, 1.0, 1.0]


def test_inverse_sqrt_exact():
    assert lr_multiplier(16, warmup_steps=4, total_steps=100, decay="inverse_sqrt") == pytest.approx(0.5)
    assert lr_multiplier(400, warmup_steps=4, total_steps=100, decay="inverse_sqrt") == pytest.approx(0.1)
    assert lr_multiplier(400, warmup_steps=4, total_steps=100, decay="inverse_sqrt", min_lr_ratio=0.2) == 0.2


def test_unknown_decay_after_warmup_raises_with_the_value():
    with pytest.raises(ValueError, match=r"decay='step'.*linear, cosine, constant, inverse_sqrt"):
        lr_multiplier(5, warmup_steps=2, total_steps=10, decay="step")  # type: ignore[arg-type]


def test_unknown_decay_during_warmup_raises():
    with pytest.raises(ValueError, match="decay='step'"):
        lr_multiplier(0, warmup_steps=2, total_steps=10, decay="step")  # type: ignore[arg-type]


def test_fractional_step_count_is_rejected():
    with pytest.raises(ValueError, match=r"warmup=2\.5: a float is a fraction of the run"):
        resolve_warmup_steps(2.5, 100)
    assert resolve_warmup_steps(3.0, 100) == 3


@pytest.mark.parametrize(("warmup", "total", "steps"), [(0, 10, 0), (3, 10, 3), (0.1, 100, 10), (0.06, 50, 3)])
def test_resolve_warmup_steps(warmup, total, steps):
    assert resolve_warmup_steps(warmup, total) == steps


def test_negative_warmup_raises_with_the_value():
    with pytest.raises(ValueError, match=r"warmup=-1: must be >= 0"):
        resolve_warmup_steps(-1, 10)


@pytest.mark.parametrize(("warmup", "quoted"), [(10, "warmup=10 is 10"), (12, "warmup=12 is 12"), (0.999, "0.999")])
def test_warmup_longer_than_the_run_raises_with_the_value(warmup, quoted):
    with pytest.raises(ValueError, match=rf"{quoted}.*not shorter than the whole run \(10 steps\)"):
        resolve_warmup_steps(warmup, 10)
