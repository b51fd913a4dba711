"""The soak's leak statistic (scripts/soak.py): a least-squares slope of RSS per step catches 4 kB a step.

A synthetic leak is injected into the statistic, on top of the committed no-leak trace and of page-sized noise:
no 2,000-step run here (the soak itself takes minutes; its result is benchmarks/soak.json).
"""

import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def soak():
    spec = importlib.util.spec_from_file_location("_soak", REPO / "scripts" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["_soak"] = module  # dataclasses resolve their module through sys.modules
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("_soak", None)


def _noisy_trace(leak_bytes: int, steps: int = 2000, seed: int = 0):
    """RSS after every step: 700 MB, allocator noise of a few 4 kB pages up and down, plus ``leak_bytes`` a step."""
    rng = random.Random(seed)
    base, page = 700 * 2**20, 4096
    xs = list(range(1, steps + 1))
    return xs, [base + leak_bytes * s + page * rng.randint(-8, 8) for s in xs]


def test_slope_is_exact_on_a_line(soak):
    growth = soak.rss_growth([200, 210, 220, 230], [7e8, 7e8 + 4e4, 7e8 + 8e4, 7e8 + 1.2e5], 200)
    assert growth.slope == pytest.approx(4000.0) and growth.stderr == pytest.approx(0.0, abs=1e-6)
    assert (growth.points, growth.span, growth.total_bytes) == (4, 30, pytest.approx(1.2e5))


@pytest.mark.parametrize("leak_bytes", [0, 4096])
def test_four_kb_a_step_is_caught_and_noise_is_not(soak, leak_bytes):
    steps, rss = _noisy_trace(leak_bytes)
    growth = soak.rss_growth(steps, rss, soak.WARMUP_STEPS)
    assert soak.leaks(growth) is bool(leak_bytes)
    assert growth.slope == pytest.approx(leak_bytes, abs=100)
    # the former check, +5% over the warm-up level, lets a 4 kB/step leak through: 7 MB of 700 MB is 1%
    assert rss[-1] / rss[soak.WARMUP_STEPS] - 1 < 0.05


def test_the_committed_soak_passes_and_fails_with_a_leak_added(soak):
    trace = json.loads((REPO / "benchmarks" / "soak.json").read_text())["trace"]
    steps = trace["step"]
    rss = [mb * 2**20 for mb in trace["rss_mb"]]
    clean = soak.rss_growth(steps, rss, soak.WARMUP_STEPS)
    assert not soak.leaks(clean)
    leaky = soak.rss_growth(steps, [r + 4096 * s for s, r in zip(steps, rss)], soak.WARMUP_STEPS)
    assert soak.leaks(leaky) and leaky.slope == pytest.approx(clean.slope + 4096)


def test_too_few_points_after_warm_up(soak):
    with pytest.raises(ValueError, match=r"rss_growth: 2 points after step 200; run more steps"):
        soak.rss_growth([100, 200, 300], [1, 2, 3], 200)
