"""Low-rank factorization: rank choice by energy, exact at full rank, parameter savings, merge back."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_llm.compression.low_rank import LowRankLinear, choose_rank, factorize_linear, factorize_model, merge_low_rank


def test_choose_rank_by_energy():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert choose_rank(s, energy=0.6) == 1  # 9/14 = 0.64
    assert choose_rank(s, energy=0.9) == 2  # 13/14 = 0.93
    assert choose_rank(s, energy=1.0) == 3
    assert choose_rank(s, rank=10) == 4


def test_factorization_is_exact_for_a_low_rank_weight():
    torch.manual_seed(0)
    linear = nn.Linear(40, 30)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(30, 4) @ torch.randn(4, 40))  # rank 4
    low = factorize_linear(linear, energy=0.999999)
    assert isinstance(low, LowRankLinear) and low.rank == 4
    x = torch.randn(5, 40)
    torch.testing.assert_close(low(x), linear(x), atol=1e-4, rtol=1e-4)
    assert sum(p.numel() for p in low.parameters()) == 4 * 40 + 30 * 4 + 30


def test_no_factorization_when_it_would_not_save_parameters():
    assert factorize_linear(nn.Linear(8, 8), rank=4) is None  # 4 * 16 = 64 = 8 * 8


def test_factorize_model_then_merge_back():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("layer", nn.ModuleList([nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 32))]))
    model.add_module("head", nn.Linear(32, 2))
    ranks = factorize_model(model, rank=4)
    assert ranks == {"layer.0.0": 4, "layer.0.1": 4}
    assert type(model.head) is nn.Linear  # outside the blocks
    x = torch.randn(3, 32)
    y = model.head(model.layer[0](x))
    assert merge_low_rank(model) == 2
    assert type(model.layer[0][0]) is nn.Linear
    torch.testing.assert_close(model.head(model.layer[0](x)), y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, r"exactly one of rank= or energy="),
        ({"rank": 2, "energy": 0.5}, r"exactly one"),
        ({"rank": 0}, r"rank=0"),
        ({"energy": 1.5}, r"energy=1.5"),
        ({"rank": 2, "patterns": [r"nothing"]}, r"match no Linear layer"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        factorize_model(nn.Sequential(nn.Linear(4, 4)), **kwargs)
