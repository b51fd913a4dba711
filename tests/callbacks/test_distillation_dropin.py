"""DistillationTeacher as a drop-in: a module whose training_step was not changed gets the distillation term once."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from compression_helpers import UserClassifier, loader, tiny_config, trainer
from transformers import BertForSequenceClassification

from lit_llm.callbacks import DistillationTeacher
from lit_llm.compression.distillation import apply_training_objectives, kd_loss


class PlainClassifier(UserClassifier):
    """A user's module as written before any distillation: training_step returns the HF loss."""

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self.model(**batch).loss


class DictClassifier(UserClassifier):
    """training_step returns a dict with 'loss' and more."""

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        out = self.model(**batch)
        return {"loss": out.loss, "logits": out.logits.detach()}


class Losses(pl.Callback):
    """The loss each micro-batch's training_step returned (undoing Lightning's division by the accumulation)."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item() * trainer.accumulate_grad_batches)


@pytest.fixture()
def teacher_dir(tmp_path):
    torch.manual_seed(1)
    out = tmp_path / "teacher"
    teacher = BertForSequenceClassification(tiny_config(num_hidden_layers=3, hidden_size=48))
    with torch.no_grad():
        teacher.classifier.bias.copy_(torch.tensor([2.0, -2.0]))  # opinionated: far from a fresh student
    teacher.save_pretrained(out)
    return out


@pytest.mark.parametrize("module_cls", [PlainClassifier, DictClassifier, UserClassifier],
                         ids=["drop_in", "dict_output", "explicit_call"])
def test_loss_is_the_mix_on_every_micro_batch_and_counted_once(tmp_path, teacher_dir, module_cls):
    teacher = BertForSequenceClassification.from_pretrained(teacher_dir).eval()
    reference = module_cls()  # seed 0: the same initial weights as the trained module
    expected, task = [], []
    with torch.no_grad():
        for batch in list(loader())[:2]:
            s = reference.model(**batch)
            t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            expected.append((0.3 * kd_loss(s.logits, t.logits, 3.0) + 0.7 * s.loss).item())
            task.append(s.loss.item())
    losses, model = Losses(), module_cls()
    cb = DistillationTeacher(teacher=str(teacher_dir), temperature=3.0, alpha=0.3)
    t = trainer(tmp_path, [cb, losses], max_steps=1, accumulate_grad_batches=2)
    t.fit(model, loader())
    # Both micro-batches of the one optimizer step ran with the initial weights: each loss is exactly the mix,
    # once (twice would be 0.3 * kd + 0.7 * (0.3 * kd + 0.7 * task)).
    assert losses.losses == pytest.approx(expected, rel=1e-5)
    assert all(abs(a - b) > 1e-2 for a, b in zip(losses.losses, task))  # the task loss alone was not returned
    assert "train/distill_kd" in t.callback_metrics
    assert "training_step" not in model.__dict__  # the module's own training_step is back after fit


def _kl_to(teacher: torch.nn.Module, student: torch.nn.Module) -> float:
    with torch.no_grad():
        batch = next(iter(loader(n=32, batch_size=32, seed=1)))
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        return kd_loss(student.eval()(**inputs).logits, teacher(**inputs).logits, 1.0).item()


def test_a_plain_module_trained_with_the_teacher_ends_closer_to_it(tmp_path, teacher_dir):
    teacher = BertForSequenceClassification.from_pretrained(teacher_dir).eval()
    plain, distilled = PlainClassifier(), PlainClassifier()
    before = _kl_to(teacher, PlainClassifier().model)
    trainer(tmp_path / "plain", [], max_steps=8).fit(plain, loader())
    t = trainer(tmp_path / "kd", [DistillationTeacher(teacher=str(teacher_dir), alpha=0.9)], max_steps=8)
    t.fit(distilled, loader())
    kl_plain, kl_distilled = _kl_to(teacher, plain.model), _kl_to(teacher, distilled.model)
    assert kl_distilled < 0.5 * kl_plain and kl_distilled < before, (before, kl_plain, kl_distilled)


# ------------------------------------------------------------------------------------------------ errors
class ReturnsNone(UserClassifier):
    def training_step(self, batch, batch_idx):
        self.model(**batch)


class NeverCallsTheStudent(UserClassifier):
    def training_step(self, batch, batch_idx):
        hidden = self.model.bert(input_ids=batch["input_ids"]).pooler_output  # the student's body, not the student
        return F.cross_entropy(self.model.classifier(hidden), batch["labels"])


class Manual(UserClassifier):
    def __init__(self, explicit: bool) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.explicit = explicit

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        outputs = self.model(**batch)
        loss = apply_training_objectives(self, batch, outputs, outputs.loss) if self.explicit else outputs.loss
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        self.log("train/loss", loss)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (ReturnsNone, r"ReturnsNone.training_step returned NoneType, so there is no loss to mix the teacher into"),
        (NeverCallsTheStudent, r"the student \(NeverCallsTheStudent.model\) did not run forward .* student_attr="),
        (lambda: Manual(explicit=False), r"Manual uses manual optimization.*apply_training_objectives\(self, batch"),
    ],
    ids=["returns_none", "student_never_called", "manual_optimization"],
)
def test_a_step_the_callback_cannot_change_raises(tmp_path, teacher_dir, make, match):
    module = make()
    with pytest.raises(RuntimeError, match=match):
        trainer(tmp_path, [DistillationTeacher(teacher=str(teacher_dir))], max_steps=2).fit(module, loader())
    assert "training_step" not in module.__dict__  # restored after the failed fit


def test_manual_optimization_with_the_explicit_call(tmp_path, teacher_dir):
    t = trainer(tmp_path, [DistillationTeacher(teacher=str(teacher_dir))], max_steps=2)
    t.fit(Manual(explicit=True), loader())
    assert "train/distill_kd" in t.callback_metrics
