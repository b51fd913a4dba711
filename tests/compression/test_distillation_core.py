"""The distillation core: KD loss with T^2, hidden-state loss, the objective hook, student_from_teacher."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from lit_llm.compression.distillation import (
    apply_training_objectives,
    attach_objective,
    detach_objective,
    hidden_state_loss,
    kd_loss,
    student_from_teacher,
)


def test_kd_loss_matches_the_formula_with_t_squared():
    torch.manual_seed(0)
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    T = 2.0
    p_t = F.softmax(t / T, -1)
    expected = (p_t * (p_t.log() - F.log_softmax(s / T, -1))).sum(-1).mean() * T**2
    torch.testing.assert_close(kd_loss(s, t, T), expected)
    assert kd_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_loss_token_level_with_mask_ignores_padding():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    t_changed = t.clone()
    t_changed[0, 3:] += 10.0  # only padded positions differ
    torch.testing.assert_close(kd_loss(s, t, 1.0, mask), kd_loss(s, t_changed, 1.0, mask))


def test_kd_loss_rejects_a_different_label_set():
    with pytest.raises(ValueError, match=r"student logits \(4, 3\) and teacher logits \(4, 5\) differ"):
        kd_loss(torch.zeros(4, 3), torch.zeros(4, 5))


def test_hidden_state_loss_with_projection():
    s, t = torch.randn(2, 3, 4), torch.randn(2, 3, 6)
    proj = nn.Linear(4, 6)
    torch.testing.assert_close(hidden_state_loss(s, t, proj), F.mse_loss(proj(s), t))
    with pytest.raises(ValueError, match=r"widths differ and no projection"):
        hidden_state_loss(s, t)


def test_objectives_hook_is_a_no_op_without_objectives_and_not_a_submodule():
    module = nn.Linear(2, 2)
    loss = torch.tensor(3.0)
    assert apply_training_objectives(module, {}, None, loss) is loss

    def double(m, batch, outputs, value):
        return value * 2

    attach_objective(module, double)
    assert apply_training_objectives(module, {}, None, loss).item() == 6.0
    assert list(module.state_dict()) == ["weight", "bias"]
    detach_objective(module, double)
    assert apply_training_objectives(module, {}, None, loss).item() == 3.0


def test_student_from_teacher_keeps_every_kth_layer(tmp_path):
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=6, num_attention_heads=2, intermediate_size=20)
    teacher = BertForSequenceClassification(cfg).eval()
    student = student_from_teacher(teacher, keep_every=2)
    assert len(student.bert.encoder.layer) == 3 and student.config.num_hidden_layers == 3
    assert teacher.config.num_hidden_layers == 6  # the teacher is untouched
    for s_idx, t_idx in ((0, 0), (1, 2), (2, 4)):
        torch.testing.assert_close(
            student.bert.encoder.layer[s_idx].output.dense.weight, teacher.bert.encoder.layer[t_idx].output.dense.weight
        )
    torch.testing.assert_close(student.classifier.weight, teacher.classifier.weight)
    student.save_pretrained(tmp_path)
    reloaded = BertForSequenceClassification.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 50, (2, 6))
    torch.testing.assert_close(reloaded(input_ids=ids).logits, student(input_ids=ids).logits)
    assert len(student_from_teacher(teacher, keep_every=3).bert.encoder.layer) == 2
    with pytest.raises(ValueError, match=r"keep_every=0"):
        student_from_teacher(teacher, keep_every=0)
