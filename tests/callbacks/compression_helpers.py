"""A minimal *user* LightningModule (not one of ours) and random data, shared by the compression callback tests.

It follows the documented contract: the HF model is ``self.model``, batches are dicts with ``input_ids``, and
``training_step`` has the one line that lets training objectives (distillation) change the loss.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import BertConfig, BertForSequenceClassification

from lit_llm.compression.distillation import apply_training_objectives

VOCAB = 64


def tiny_config(**overrides: Any) -> BertConfig:
    kwargs: dict[str, Any] = dict(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
        max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2,
    )
    kwargs.update(overrides)
    return BertConfig(**kwargs)


class RandomTokens(Dataset):
    """Learnable toy task: the label is whether token 5 occurs in the sequence."""

    def __init__(self, n: int = 32, length: int = 12, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(6, VOCAB, (n, length), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)
        self.ids[self.labels == 1, 3] = 5

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


def loader(n: int = 32, batch_size: int = 8, seed: int = 0) -> DataLoader:
    return DataLoader(RandomTokens(n, seed=seed), batch_size=batch_size)


class UserClassifier(pl.LightningModule):
    def __init__(self, lr: float = 1e-2, **config: Any) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = BertForSequenceClassification(tiny_config(**config))
        self.lr = lr

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        outputs = self.model(**batch)
        loss = apply_training_objectives(self, batch, outputs, outputs.loss)  # the one-line contract
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        outputs = self.model(**batch)
        self.log("val/loss", outputs.loss)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        outputs = self.model(**batch)
        acc = (outputs.logits.argmax(-1) == batch["labels"]).float().mean()
        self.log("test/accuracy", acc)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def trainer(tmp_path: Any, callbacks: list[Any], max_steps: int = 4, **kwargs: Any) -> pl.Trainer:
    options: dict[str, Any] = dict(
        accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        num_sanity_val_steps=0, limit_val_batches=0,
    )
    options.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **options)


class LazyClassifier(UserClassifier):
    """Builds its HF model in ``setup``, as our modules do when labels come from the datamodule."""

    def __init__(self, **config: Any) -> None:
        pl.LightningModule.__init__(self)
        self.config_overrides = config
        self.model = None  # type: ignore[assignment]
        self.lr = 1e-2

    def setup(self, stage: str) -> None:
        if self.model is None:
            torch.manual_seed(0)
            self.model = BertForSequenceClassification(tiny_config(**self.config_overrides))
