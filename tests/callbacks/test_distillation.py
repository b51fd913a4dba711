"""The DistillationTeacher callback on a user's own LightningModule that calls apply_training_objectives itself."""

from __future__ import annotations

import pickle

import lightning.pytorch as pl
import pytest
import torch
from compression_helpers import UserClassifier, loader, tiny_config, trainer
from transformers import BertForSequenceClassification

from lit_llm.callbacks import DistillationTeacher


@pytest.fixture()
def teacher_dir(tmp_path):
    torch.manual_seed(1)
    out = tmp_path / "teacher"
    BertForSequenceClassification(tiny_config(num_hidden_layers=3, hidden_size=48)).save_pretrained(out)
    return out


class _Check(pl.Callback):
    """Records the module's training loss and the KD term it logged, and checks the teacher's state."""

    def __init__(self):
        self.pairs = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        teacher = next(c for c in trainer.callbacks if isinstance(c, DistillationTeacher)).teacher
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
        self.pairs.append((outputs["loss"].item(), trainer.callback_metrics["train/distill_kd"].item()))


def test_alpha_one_trains_on_the_kd_loss_only_and_teacher_stays_out(tmp_path, teacher_dir):
    check = _Check()
    cb = DistillationTeacher(teacher=str(teacher_dir), temperature=2.0, alpha=1.0)
    model = UserClassifier()
    t = trainer(tmp_path, [cb, check], max_steps=3)
    t.fit(model, loader())
    assert len(check.pairs) == 3
    for loss, kd in check.pairs:
        assert loss == pytest.approx(kd, rel=1e-6)
    before = BertForSequenceClassification.from_pretrained(teacher_dir)
    for a, b in zip(before.parameters(), cb.teacher.parameters()):
        assert torch.equal(a, b)  # never trained
    assert not any(k.startswith("teacher") for k in model.state_dict())
    t.save_checkpoint(tmp_path / "student.ckpt")
    ckpt = torch.load(tmp_path / "student.ckpt", weights_only=True)
    n_student = sum(v.numel() for v in model.state_dict().values())
    assert sum(v.numel() for v in ckpt["state_dict"].values()) == n_student  # no teacher weights saved


def test_hidden_state_distillation_learns_a_projection(tmp_path, teacher_dir):
    cb = DistillationTeacher(teacher=str(teacher_dir), hidden_layers={0: 0, 1: 2}, hidden_weight=1.0)
    model = UserClassifier()
    t = trainer(tmp_path, [cb], max_steps=3)
    t.fit(model, loader())
    assert set(cb.projections) == {"0", "1"}
    proj = cb.projections["0"]
    assert (proj.in_features, proj.out_features) == (32, 48)
    assert "train/distill_hidden" in t.callback_metrics
    fresh = torch.nn.Linear(32, 48)
    assert not torch.equal(proj.weight.detach().cpu(), fresh.weight)  # trained (and not the init of another seed)
    assert set(cb.state_dict()["projections"]) == {"0.weight", "0.bias", "1.weight", "1.bias"}


def test_teacher_from_a_lightning_checkpoint(tmp_path):
    teacher_module = UserClassifier()
    t0 = trainer(tmp_path / "t", [], max_steps=1)
    t0.fit(teacher_module, loader())
    path = tmp_path / "teacher.ckpt"
    t0.save_checkpoint(path)
    config = {"model_type": "bert", **tiny_config().to_diff_dict()}
    cb = DistillationTeacher(teacher=str(path), teacher_architecture=config)
    student = UserClassifier()
    t = trainer(tmp_path, [cb], max_steps=1)
    t.fit(student, loader())
    for a, b in zip(teacher_module.model.parameters(), cb.teacher.parameters()):
        torch.testing.assert_close(a, b.cpu())


def _fit_with(tmp_path, teacher, **kwargs):
    t = trainer(tmp_path, [DistillationTeacher(teacher=str(teacher), **kwargs)], max_steps=1)
    t.fit(UserClassifier(), loader())


def test_teacher_path_that_does_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        _fit_with(tmp_path, tmp_path / "missing" / "teacher.ckpt")
    with pytest.raises(FileNotFoundError, match=r"model '.*/no_dir' does not exist"):
        _fit_with(tmp_path, tmp_path / "no_dir")


def test_teacher_checkpoint_that_is_not_a_model(tmp_path):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match=r"teacher checkpoint: .*garbage.ckpt is not a readable checkpoint"):
        _fit_with(tmp_path, garbage)
    evil = tmp_path / "evil.ckpt"
    torch.save({"payload": pickle.PicklingError("x")}, evil)  # a global that weights_only=True refuses
    with pytest.raises(ValueError, match=r"needs the unsafe globals .*weights_only=True and never unpickles code"):
        _fit_with(tmp_path, evil)
    empty = tmp_path / "empty.ckpt"
    torch.save({"epoch": 3}, empty)
    with pytest.raises(ValueError, match=r"holds no model weights"):
        _fit_with(tmp_path, empty)


def test_teacher_with_another_vocabulary_or_label_set(tmp_path):
    other_vocab = tmp_path / "v"
    BertForSequenceClassification(tiny_config(vocab_size=99)).save_pretrained(other_vocab)
    with pytest.raises(ValueError, match=r"vocab_size 99, the student 64"):
        _fit_with(tmp_path, other_vocab)
    other_labels = tmp_path / "l"
    BertForSequenceClassification(tiny_config(num_labels=3)).save_pretrained(other_labels)
    with pytest.raises(ValueError, match=r"teacher labels .* differ from the student's"):
        _fit_with(tmp_path, other_labels)


def test_hidden_layer_out_of_range(tmp_path, teacher_dir):
    with pytest.raises(ValueError, match=r"\{5: 0\} out of range; the student has 2 blocks and the teacher 3"):
        _fit_with(tmp_path, teacher_dir, hidden_layers={5: 0})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0.0}, r"temperature=0.0"),
        ({"alpha": 1.5}, r"alpha=1.5"),
        ({"hidden_weight": -1}, r"hidden_weight=-1"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DistillationTeacher(teacher="x", **kwargs)


def test_works_when_the_module_builds_its_model_in_setup(tmp_path, teacher_dir):
    from compression_helpers import LazyClassifier

    cb = DistillationTeacher(teacher=str(teacher_dir))
    t = trainer(tmp_path, [cb], max_steps=2)
    t.fit(LazyClassifier(), loader())
    assert "train/distill_kd" in t.callback_metrics
