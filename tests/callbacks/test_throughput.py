"""TransformerThroughputMonitor: FLOPs per batch from the batch's shape, tokens/s and MFU logged."""

from __future__ import annotations

import csv
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader
from transformers import BertConfig, BertForSequenceClassification

from lit_llm.callbacks import TransformerThroughputMonitor
from lit_llm.callbacks.throughput import batch_input_ids
from lit_llm.training.flops import transformer_flops, transformer_shape

B, T = 2, 6


class UserClassifier(pl.LightningModule):
    """Not ours: a tiny BERT wrapped by hand, dict batches."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = BertForSequenceClassification(BertConfig(
            vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
            max_position_embeddings=16, num_labels=2,
        ))
        self.seen: list[tuple[int, int]] = []

    def training_step(self, batch, batch_idx):
        # the callback set flops_per_batch before this batch
        self.seen.append((tuple(batch["input_ids"].shape), self.flops_per_batch))
        return self.model(**batch).loss

    def validation_step(self, batch, batch_idx):
        self.seen.append((tuple(batch["input_ids"].shape), self.flops_per_batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def batches(n: int, seq_len: int = T) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    items = [{"input_ids": torch.randint(0, 30, (seq_len,), generator=g),
              "attention_mask": torch.tensor([1] * (seq_len - 1) + [0]),
              "labels": torch.tensor(i % 2)} for i in range(n * B)]
    return DataLoader(items, batch_size=B)


def trainer(tmp_path, callbacks, **kwargs: Any) -> pl.Trainer:
    defaults = dict(accelerator="cpu", devices=1, max_steps=4, logger=CSVLogger(tmp_path, name="run", version=0),
                    log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, limit_val_batches=0)
    return pl.Trainer(callbacks=callbacks, **{**defaults, **kwargs})


def test_logs_tokens_per_second_flops_and_mfu(tmp_path):
    module = UserClassifier()
    monitor = TransformerThroughputMonitor(peak_flops=1e9, window_size=2)
    trainer(tmp_path, [monitor]).fit(module, batches(4))
    expected = transformer_flops(transformer_shape(module.model), B, T, training=True)
    assert [f for _, f in module.seen] == [expected] * 4
    with open(tmp_path / "run" / "version_0" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/device/mfu")]
    assert len(rows) == 3  # from the second batch on (window of 2)
    for row in rows:
        assert float(row["train/device/mfu"]) == pytest.approx(float(row["train/device/flops_per_sec"]) / 1e9)
        assert float(row["train/device/items_per_sec"]) > 0  # tokens/s
    assert float(rows[-1]["train/lengths"]) == 4 * B * (T - 1)  # real tokens: the padding is not counted


def test_forward_only_flops_in_validation_and_variable_lengths(tmp_path):
    module = UserClassifier()
    monitor = TransformerThroughputMonitor(window_size=2)
    trainer(tmp_path, [monitor], max_steps=1, limit_val_batches=1, num_sanity_val_steps=0).fit(
        module, batches(1, seq_len=9), batches(1, seq_len=5)
    )
    shape = transformer_shape(module.model)
    assert module.seen == [((B, 9), transformer_flops(shape, B, 9, training=True)),
                           ((B, 5), transformer_flops(shape, B, 5, training=False))]


def test_module_with_its_own_flops_keeps_them(tmp_path):
    class OwnFlops(UserClassifier):
        @property
        def flops_per_batch(self) -> int:
            return 123

    module = OwnFlops()
    trainer(tmp_path, [TransformerThroughputMonitor(window_size=2)], max_steps=2).fit(module, batches(2))
    assert [f for _, f in module.seen] == [123, 123]


def test_module_without_hf_model_raises_with_the_fix(tmp_path):
    class Plain(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(T, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch["input_ids"].float()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(ValueError, match="Plain has no HF config"):
        trainer(tmp_path, [TransformerThroughputMonitor()], max_steps=1).fit(Plain(), batches(1))


def test_batch_input_ids_forms():
    ids = torch.zeros(2, 5, dtype=torch.long)
    assert batch_input_ids({"input_ids": ids}) is ids
    assert batch_input_ids(ids) is ids
    assert batch_input_ids((ids, torch.zeros(2))) is ids
    assert batch_input_ids({"tokens": ids}, key="tokens") is ids
    with pytest.raises(ValueError, match=r"under 'input_ids' in a batch of type dict \(keys \['x'\]\).*input_key="):
        batch_input_ids({"x": ids})


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"peak_flops": 0}, r"TransformerThroughputMonitor\(peak_flops=0\): must be > 0"),
    ({"peak_flops": -1e12}, r"peak_flops=-1000000000000.0\)"),
    ({"window_size": 1}, r"TransformerThroughputMonitor\(window_size=1\): must be an integer >= 2"),
])
def test_bad_arguments_quote_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TransformerThroughputMonitor(**kwargs)
