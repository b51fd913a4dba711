"""DistillationTeacher on our MaskedLanguageModel (masked positions, DistilBERT) and CausalLanguageModel (shifted)."""

from __future__ import annotations

import random
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, BertForMaskedLM, GPT2LMHeadModel

from lit_llm.callbacks import DistillationTeacher
from lit_llm.compression.distillation import kd_loss
from lit_llm.modules import CausalLanguageModel, MaskedLanguageModel
from lit_llm.training.token_loss import token_cross_entropy

LENGTH = 12


def _batches(tokenizer_dir: Path, n: int = 32, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Sentences of unequal length (so padding occurs), padded to LENGTH tokens."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    words = sorted(w for w in tokenizer.get_vocab() if w.isalpha() and len(w) > 2)  # get_vocab order varies
    rng = random.Random(seed)
    texts = [" ".join(rng.choices(words, k=rng.randint(3, 9))) for _ in range(n)]
    enc = tokenizer(texts, padding="max_length", max_length=LENGTH, truncation=True, return_tensors="pt")
    assert (enc["attention_mask"] == 0).any()
    return [{k: v[i] for k, v in enc.items() if k in ("input_ids", "attention_mask")} for i in range(n)]


def _loader(tokenizer_dir: Path, **kwargs) -> DataLoader:
    return DataLoader(_batches(tokenizer_dir, **kwargs), batch_size=4)


def _teacher(kind: str, student_dir: Path, out: Path) -> Path:
    """A teacher of the student's architecture and tokenizer with strong opinions (far from a fresh student)."""
    torch.manual_seed(1)
    cls = BertForMaskedLM if kind == "mlm" else GPT2LMHeadModel
    teacher = cls.from_pretrained(student_dir)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        if kind == "mlm":
            teacher.get_output_embeddings().bias.copy_(torch.randn(teacher.config.vocab_size) * 3)
        else:
            # The head is tied to the embeddings and has no bias: a large final-norm bias gives the same effect.
            teacher.transformer.ln_f.bias.copy_(torch.randn(teacher.config.n_embd) * 50)
    teacher.save_pretrained(out)
    AutoTokenizer.from_pretrained(student_dir).save_pretrained(out)
    return out


def _student(kind: str, student_dir: Path, **kwargs) -> pl.LightningModule:
    if kind == "mlm":
        return MaskedLanguageModel(model=str(student_dir), export=False, masking_seed=0, **kwargs)
    return CausalLanguageModel(model=str(student_dir), export=False, **kwargs)


def _rows(kind: str, lm: pl.LightningModule, teacher: torch.nn.Module, batch: dict[str, torch.Tensor], stage: str):
    """(student rows, teacher rows, targets) at the positions the module's own loss scores, both (N, V)."""
    attention_mask = batch["attention_mask"]
    if kind == "mlm":
        input_ids, labels = lm.mask(batch, stage)
        target = labels != -100  # (B, T)
        s = lm.model(input_ids=input_ids, attention_mask=attention_mask).logits
        t = teacher(input_ids=input_ids, attention_mask=attention_mask).logits
        return s[target], t[target], labels[target]
    input_ids = batch["input_ids"]
    labels = input_ids.masked_fill(attention_mask == 0, -100)[:, 1:]  # position t predicts token t + 1
    target = labels != -100
    s = lm.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    t = teacher(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    return s[target], t[target], labels[target]


class Losses(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []
        self.kd: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())
        self.kd.append(trainer.callback_metrics["train/distill_kd"].item())


def _trainer(tmp_path: Path, callbacks: list, max_steps: int) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=0,
        num_sanity_val_steps=0, callbacks=callbacks,
    )


@pytest.mark.parametrize("exact_token_loss", [True, False], ids=["token_sum", "mean"])
@pytest.mark.parametrize("kind", ["mlm", "clm"])
def test_kd_is_on_the_positions_the_task_loss_scores(tmp_path, tiny_bert_dir, tiny_gpt2_dir, kind, exact_token_loss):
    student_dir = tiny_bert_dir if kind == "mlm" else tiny_gpt2_dir
    teacher_dir = _teacher(kind, student_dir, tmp_path / "teacher")
    teacher = (BertForMaskedLM if kind == "mlm" else GPT2LMHeadModel).from_pretrained(teacher_dir).eval()
    batch = next(iter(_loader(student_dir)))
    reference = _student(kind, student_dir, exact_token_loss=exact_token_loss)  # same weights, same masks
    with torch.no_grad():
        s, t, labels = _rows(kind, reference.train(), teacher, batch, "train")
        kd_sum, n = kd_loss(s, t, 2.0, reduction="sum"), len(labels)
        ce_sum, _ = token_cross_entropy(s, labels)
    expected = 0.4 * kd_sum + 0.6 * ce_sum if exact_token_loss else (0.4 * kd_sum + 0.6 * ce_sum) / n
    losses = Losses()
    lm = _student(kind, student_dir, exact_token_loss=exact_token_loss)
    cb = DistillationTeacher(teacher=str(teacher_dir), temperature=2.0, alpha=0.4)
    _trainer(tmp_path, [cb, losses], max_steps=1).fit(lm, _loader(student_dir))
    # The teacher saw the student's (masked) input and was read at the student's target positions: with the MLM's
    # sparse head the student's logits are (N, V) rows, the teacher's (B, T, V); a shift or a wrong mask would differ.
    assert losses.losses[0] == pytest.approx(expected.item(), rel=1e-4)
    assert losses.kd[0] == pytest.approx((kd_sum / n).item(), rel=1e-4)  # logged as a mean per target


def _kl_to_teacher(kind, lm, teacher, student_dir) -> float:
    batch = next(iter(DataLoader(_batches(student_dir, n=16, seed=7), batch_size=16)))
    with torch.no_grad():
        s, t, _ = _rows(kind, lm.eval(), teacher, batch, "val")
        return kd_loss(s, t, 1.0).item()


@pytest.mark.parametrize("kind", ["mlm", "clm"])
def test_a_student_trained_with_the_teacher_ends_closer_to_it(tmp_path, tiny_bert_dir, tiny_gpt2_dir, kind):
    student_dir = tiny_bert_dir if kind == "mlm" else tiny_gpt2_dir
    teacher_dir = _teacher(kind, student_dir, tmp_path / "teacher")
    teacher = (BertForMaskedLM if kind == "mlm" else GPT2LMHeadModel).from_pretrained(teacher_dir).eval()

    def optimizer(params):
        return torch.optim.AdamW(params, lr=1e-2)

    extra = {"mlm_probability": 0.4} if kind == "mlm" else {}  # more targets per step on these short rows
    plain = _student(kind, student_dir, optimizer=optimizer, **extra)
    distilled = _student(kind, student_dir, optimizer=optimizer, **extra)
    kl_before = _kl_to_teacher(kind, _student(kind, student_dir), teacher, student_dir)
    torch.manual_seed(0)
    _trainer(tmp_path / "plain", [], max_steps=8).fit(plain, _loader(student_dir))
    torch.manual_seed(0)
    cb = DistillationTeacher(teacher=str(teacher_dir), alpha=0.9)
    _trainer(tmp_path / "kd", [cb], max_steps=8).fit(distilled, _loader(student_dir))
    kl_plain = _kl_to_teacher(kind, plain, teacher, student_dir)
    kl_distilled = _kl_to_teacher(kind, distilled, teacher, student_dir)
    assert kl_distilled < 0.7 * kl_plain and kl_distilled < 0.7 * kl_before, (kl_before, kl_plain, kl_distilled)
