"""The target-position contract of lit_llm.compression.distillation: mark / read / select, and kd_loss's sum
reduction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_llm.compression.distillation import distillation_targets, kd_loss, mark_distillation_targets, select_targets


def test_mark_and_read_targets_on_a_module():
    module = nn.Linear(2, 2)
    assert distillation_targets(module) is None
    mask = torch.tensor([[True, False, True]])
    mark_distillation_targets(module, mask, "sum")
    targets = distillation_targets(module)
    assert targets is not None and targets.reduction == "sum" and torch.equal(targets.positions, mask)
    assert set(module.state_dict()) == {"weight", "bias"}  # a plain attribute, never state
    assert distillation_targets(module, clear=True) is targets
    assert distillation_targets(module) is None


def test_mark_targets_rejects_an_unknown_reduction():
    with pytest.raises(ValueError, match=r"reduction='avg'\): must be 'mean' or 'sum'"):
        mark_distillation_targets(nn.Linear(2, 2), torch.ones(1, 3, dtype=torch.bool), "avg")  # type: ignore[arg-type]


def test_select_targets_from_dense_and_from_sparse_student_logits():
    torch.manual_seed(0)
    teacher = torch.randn(2, 4, 5)  # (B, T, V)
    dense = torch.randn(2, 4, 5)
    positions = torch.tensor([[False, True, True, False], [True, False, False, False]])
    s, t = select_targets(dense, teacher, positions)
    assert torch.equal(s, dense[positions]) and torch.equal(t, teacher[positions])  # (3, 5) each, row for row
    sparse = dense[positions]  # a head run on the targets only, row-major order
    s2, t2 = select_targets(sparse, teacher, positions)
    assert torch.equal(s2, s) and torch.equal(t2, t)


def test_select_targets_that_do_not_fit():
    teacher, positions = torch.randn(2, 4, 5), torch.ones(2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"student logits \(3, 5\) match neither the \(2, 4\) positions nor their 8"):
        select_targets(torch.randn(3, 5), teacher, positions)
    with pytest.raises(ValueError, match=r"teacher logits \(2, 3, 5\) do not cover the target positions \(2, 4\)"):
        select_targets(torch.randn(2, 4, 5), torch.randn(2, 3, 5), positions)


def test_kd_loss_sum_is_the_mean_times_the_count():
    torch.manual_seed(0)
    s, t = torch.randn(6, 7), torch.randn(6, 7)
    torch.testing.assert_close(kd_loss(s, t, 2.0, reduction="sum"), kd_loss(s, t, 2.0) * 6)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    s3, t3 = s.reshape(2, 3, 7), t.reshape(2, 3, 7)
    torch.testing.assert_close(kd_loss(s3, t3, 2.0, mask, reduction="sum"), kd_loss(s3, t3, 2.0, mask) * 3)
