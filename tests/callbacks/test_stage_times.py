"""StageTimes: where a run's wall time goes, on a user's own LightningModule (training_step unchanged)."""

from __future__ import annotations

import time

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lit_llm.callbacks import StageTimes
from lit_llm.callbacks.stage_times import process_start_time


class UserModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def test_step(self, batch, batch_idx):
        self.validation_step(batch, batch_idx)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class SlowData(pl.LightningDataModule):
    """A datamodule whose setup takes a known minimum time (reading and tokenizing, in a real one)."""

    def setup(self, stage: str) -> None:
        time.sleep(0.2)

    def _loader(self):
        return DataLoader(TensorDataset(torch.randn(16, 4), torch.randn(16, 1)), batch_size=4)

    train_dataloader = val_dataloader = test_dataloader = _loader


def test_fit_and_test_are_itemized_and_add_up(tmp_path):
    times = StageTimes()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[times])
    times.mark_start()
    begin = time.time()
    trainer.fit(UserModule(), datamodule=SlowData())
    trainer.test(trainer.lightning_module, datamodule=SlowData())
    elapsed = time.time() - begin
    assert set(times.seconds) == {"startup", "data", "model_setup", "training", "validation", "fit_end", "test"}
    assert all(v >= 0 for v in times.seconds.values()), times.seconds
    assert times.seconds["data"] >= 0.2  # the datamodule's setup counts as data, not as training
    assert times.seconds["test"] >= 0.2  # the test's data setup counts as test
    # the stages after mark_start are disjoint pieces of the run: together at most its wall time
    assert sum(v for k, v in times.seconds.items() if k != "startup") <= elapsed + 0.05
    line = times.summary()
    assert line.startswith("start-up ") and "data setup" in line and line.endswith(" s)")
    # 2 epochs of 16 examples in batches of 4: the loop's batches and samples, and its rate
    assert (times.train_batches, times.train_samples) == (8, 32)
    rate = 32 / times.seconds["training"]
    assert f"training loop {times.seconds['training']:.1f} s (8 batches, 32 samples, {rate:.1f} samples/s)" in line
    assert line.index("training loop") < line.index("validation") < line.index("fit end") < line.index("test")


def test_without_mark_start_data_setup_counts_from_process_start(tmp_path):
    times = StageTimes()
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[times], limit_val_batches=0)
    trainer.fit(UserModule(), datamodule=SlowData())
    assert "startup" not in times.seconds and "validation" not in times.seconds
    started = process_start_time()
    assert started is not None and times.seconds["data"] >= 0.2
    assert times.seconds["data"] <= time.time() - started


def test_process_start_time_without_psutil_reads_proc(monkeypatch):
    import sys

    with_psutil = process_start_time()
    monkeypatch.setitem(sys.modules, "psutil", None)  # `import psutil` raises ImportError
    without = process_start_time()
    assert with_psutil is not None and without is not None
    assert abs(with_psutil - without) < 1.0


def test_mark_start_since_counts_start_up_from_the_given_moment():
    # A run that is not its process's first (a tune trial) passes its own beginning instead of process start.
    times = StageTimes()
    times.mark_start(since=time.time() - 5.0)
    assert 5.0 <= times.seconds["startup"] < 6.0
    times.mark_start()
    started = process_start_time()
    assert started is not None and times.seconds["startup"] >= time.time() - started - 1.0


def test_a_batch_lightning_cannot_size_counts_batches_only():
    times = StageTimes()
    times.seconds = {"training": 4.0}
    for _ in range(3):
        times.on_train_batch_end(None, None, None, {"text": ["a", "b"]}, 0)  # no tensor to read a size from
    assert (times.train_batches, times.train_samples) == (3, None)
    assert times.summary() == "training loop 4.0 s (3 batches) (total 4.0 s)"
