"""Callbacks on 2 CPU processes (ddp_fork, gloo) against one process, where the math says they must match."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from torch.utils.data import DataLoader, DistributedSampler
from transformers import BertConfig, BertForSequenceClassification

from lit_llm.callbacks import DistillationTeacher
from lit_llm.compression.distillation import apply_training_objectives

SAMPLES = 16


def _config(hidden: int) -> BertConfig:
    return BertConfig(
        vocab_size=30,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=hidden,
        max_position_embeddings=16,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def _items() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        {
            "input_ids": torch.randint(0, 30, (6,), generator=g),
            "attention_mask": torch.ones(6, dtype=torch.long),
            "labels": torch.tensor(i % 2),
        }
        for i in range(SAMPLES)
    ]


class Student(pl.LightningModule):
    """A user's module: the documented one-line contract for distillation in training_step."""

    def __init__(self, micro_batch: int, val_losses: dict[int, list[float]] | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = BertForSequenceClassification(_config(8))
        self.micro_batch = micro_batch
        self.val_losses = val_losses

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        outputs = self.model(**batch)
        return apply_training_objectives(self, batch, outputs, outputs.loss)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if self.val_losses is not None:  # a different curve on each rank, deliberately not synced
            curve = self.val_losses[self.global_rank]
            self.log("val/loss", curve[min(self.current_epoch, len(curve) - 1)], sync_dist=False)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("test/loss", self.model(**batch).loss, sync_dist=True)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(_items(), batch_size=4)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5)

    def train_dataloader(self) -> DataLoader:
        items = _items()
        if self.trainer.world_size == 1:
            return DataLoader(items, batch_size=self.micro_batch)
        # Ranks take alternate examples in order, so each global batch is the single process's batch.
        sampler = DistributedSampler(items, num_replicas=self.trainer.world_size, rank=self.global_rank, shuffle=False)
        return DataLoader(items, batch_size=self.micro_batch, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_items()[:4], batch_size=4)


class Dump(Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = {k: v.tolist() for k, v in pl_module.model.state_dict().items()}
        (self.out / f"rank{trainer.global_rank}.json").write_text(
            json.dumps(
                {
                    "state": state,
                    "epoch": trainer.current_epoch,
                    "step": trainer.global_step,
                    "keys": sorted(pl_module.state_dict()),
                }
            )
        )


def _trainer(**kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return pl.Trainer(**{**defaults, **kwargs})


@pytest.fixture()
def teacher_dir(tmp_path) -> Path:
    torch.manual_seed(1)
    out = tmp_path / "teacher"
    BertForSequenceClassification(_config(16)).save_pretrained(out)
    return out


@pytest.mark.slow
def test_distillation_on_two_processes_equals_one(tmp_path, teacher_dir):
    # One process with batch 8 and two with batch 4 each see the same 8 examples per step: same gradients.
    single = Student(micro_batch=8)
    _trainer(
        devices=1, callbacks=[DistillationTeacher(str(teacher_dir), temperature=2.0, alpha=0.5)], limit_val_batches=0
    ).fit(single)
    _trainer(
        devices=2,
        strategy="ddp_fork",
        limit_val_batches=0,
        use_distributed_sampler=False,
        callbacks=[DistillationTeacher(str(teacher_dir), temperature=2.0, alpha=0.5), Dump(tmp_path)],
    ).fit(Student(micro_batch=4))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["state"] == ranks[1]["state"]  # replicas identical
    assert not any("teacher" in k for k in ranks[0]["keys"])  # the teacher is never part of the student
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(torch.tensor(ranks[0]["state"][name]), value, rtol=1e-5, atol=1e-6)
    # And distillation did change the result: without the teacher the weights differ.
    plain = Student(micro_batch=8)
    _trainer(devices=1, limit_val_batches=0).fit(plain)
    assert not torch.allclose(plain.model.classifier.weight, single.model.classifier.weight)


@pytest.mark.slow
def test_early_stopping_stops_every_rank_together(tmp_path):
    # Rank 0 plateaus from the start, rank 1 keeps improving: Lightning's EarlyStopping reduces the decision over
    # ranks (any rank may stop the run), so both end at the same epoch instead of one waiting forever.
    curves = {0: [1.0] * 10, 1: [1.0 / (e + 1) for e in range(10)]}
    _trainer(
        devices=2,
        strategy="ddp_fork",
        max_epochs=10,
        callbacks=[EarlyStopping(monitor="val/loss", patience=1), Dump(tmp_path)],
    ).fit(Student(micro_batch=4, val_losses=curves))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["epoch"] == ranks[1]["epoch"] == 2
    assert ranks[0]["step"] == ranks[1]["step"]


class DumpLogits(Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ids = torch.stack([item["input_ids"] for item in _items()])
        with torch.no_grad():
            logits = pl_module.model(input_ids=ids).logits
        kind = f"{type(pl_module.model).__module__}.{type(pl_module.model).__name__}"
        (self.out / f"logits{trainer.global_rank}.json").write_text(
            json.dumps({"logits": logits.tolist(), "model_type": kind, "int8_layers": pl_module.model.int8_layers})
        )


@pytest.mark.slow
def test_int8_quantization_on_two_processes_equals_one(tmp_path):
    from lit_llm.callbacks import Int8Quantization

    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    _trainer(devices=1, callbacks=[Int8Quantization(report=False), DumpLogits(one)]).test(
        Student(micro_batch=4)
    )
    _trainer(
        devices=2, strategy="ddp_fork", callbacks=[Int8Quantization(report=False), DumpLogits(two)]
    ).test(Student(micro_batch=4))
    single = json.loads((one / "logits0.json").read_text())
    ranks = [json.loads((two / f"logits{r}.json").read_text()) for r in (0, 1)]
    assert single["model_type"] == "lit_llm.compression.quantized_artifacts.OnnxRuntimeModel"  # the int8 ONNX session
    assert single["int8_layers"] > 0
    assert ranks[0] == ranks[1] == single  # each replica quantizes identically, as one process does
