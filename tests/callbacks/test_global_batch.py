"""GlobalBatchSize: accumulation derived from the global batch; the optimization does not depend on the split."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, GradientAccumulationScheduler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_llm.callbacks import GlobalBatchSize, WarmupSchedule
from lit_llm.callbacks.global_batch import accumulation_for


def dataset(n: int = 32) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]))


class UserRegression(pl.LightningModule):
    """Not ours: a linear model with a plain SGD optimizer and its own train_dataloader."""

    def __init__(self, batch_size: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(4, 1)
        self.batch_size = batch_size

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)  # a mean over the micro batch

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def train_dataloader(self):
        return DataLoader(dataset(), batch_size=self.batch_size)


class UserData(pl.LightningDataModule):
    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self):
        return DataLoader(dataset(), batch_size=self.batch_size)


class CountSteps(Callback):
    def __init__(self) -> None:
        self.steps = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.steps += 1


def trainer(callbacks: list[Callback], **kwargs: Any) -> pl.Trainer:
    defaults = dict(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
    return pl.Trainer(callbacks=callbacks, **{**defaults, **kwargs})


@pytest.mark.parametrize(("global_batch", "micro", "devices", "accumulation"),
                         [(256, 16, 4, 4), (32, 32, 1, 1), (48, 2, 3, 8)])
def test_accumulation_for_exact(global_batch, micro, devices, accumulation):
    assert accumulation_for(global_batch, micro, devices) == accumulation


def test_global_batch_that_does_not_divide_quotes_the_values_and_proposes_fixes():
    with pytest.raises(ValueError, match=r"global_batch_size=100\) is not a multiple of micro batch 16 x 2 device\(s\) "
                                         r"= 32: use global_batch_size=96 or 128"):
        accumulation_for(100, 16, 2)


@pytest.mark.parametrize("kwargs", [{"global_batch_size": 0}, {"global_batch_size": -8}, {"global_batch_size": 8.0},
                                    {"global_batch_size": True}, {"global_batch_size": 8, "micro_batch_size": 0}])
def test_bad_sizes_quote_the_value(kwargs):
    name, value = list(kwargs.items())[-1]
    with pytest.raises(ValueError, match=rf"GlobalBatchSize\({name}={value!r}\): must be an integer >= 1"):
        GlobalBatchSize(**kwargs)


def test_reads_the_datamodule_batch_size_and_sets_accumulation():
    steps, callback = CountSteps(), GlobalBatchSize(global_batch_size=16)
    fit = trainer([callback, steps])
    fit.fit(UserRegression(), datamodule=UserData(batch_size=4))
    # 32 samples, micro batch 4 -> 8 batches; global 16 -> accumulate 4 -> 2 optimizer steps
    assert fit.accumulate_grad_batches == 4 and steps.steps == 2 and fit.global_step == 2
    assert fit.callback_metrics["train/global_batch_size"] == 16
    assert callback.state_dict() == {"global_batch_size": 16, "accumulate_grad_batches": 4, "world_size": 1}


def test_reads_the_train_dataloader_when_there_is_no_datamodule():
    fit = trainer([GlobalBatchSize(global_batch_size=16)])
    fit.fit(UserRegression(batch_size=2))
    assert fit.accumulate_grad_batches == 8 and fit.global_step == 2


def test_explicit_micro_batch_size_wins():
    fit = trainer([GlobalBatchSize(global_batch_size=16, micro_batch_size=8)], max_steps=1)
    fit.fit(UserRegression(batch_size=8), datamodule=UserData(batch_size=4))
    assert fit.accumulate_grad_batches == 2


def test_warmup_sees_the_derived_accumulation():
    warmup = WarmupSchedule(warmup=0.5)
    # GlobalBatchSize runs at setup, before every on_fit_start, whatever the callback order
    trainer([warmup, GlobalBatchSize(global_batch_size=16)], max_epochs=2).fit(UserRegression(batch_size=4))
    assert warmup.total_steps == 4  # 8 batches / 4 per step x 2 epochs


def test_same_update_whatever_the_micro_batch():
    # global batch 16 as 1 x 16, 4 x 4 or 8 x 2: the same mean gradient, so the same weights after each step
    # (this is what keeps the optimization identical when the device count changes)
    weights = []
    for micro in (16, 4, 2):
        model = UserRegression(batch_size=micro)
        trainer([GlobalBatchSize(global_batch_size=16)]).fit(model)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(weights[1], weights[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(weights[2], weights[0], rtol=1e-6, atol=1e-6)


def test_global_batch_not_divisible_by_the_micro_batch_raises_at_setup():
    with pytest.raises(ValueError, match=r"global_batch_size=20\) is not a multiple of micro batch 8 x 1 device"):
        trainer([GlobalBatchSize(global_batch_size=20)]).fit(UserRegression(batch_size=8))


def test_conflicting_trainer_accumulation_raises():
    with pytest.raises(ValueError, match=r"Trainer\(accumulate_grad_batches=3\) conflicts with GlobalBatchSize\("
                                         r"global_batch_size=16\), which needs 4"):
        trainer([GlobalBatchSize(global_batch_size=16)], accumulate_grad_batches=3).fit(UserRegression())


def test_gradient_accumulation_scheduler_conflict_raises():
    callbacks = [GlobalBatchSize(global_batch_size=16), GradientAccumulationScheduler({0: 2})]
    with pytest.raises(ValueError, match="GradientAccumulationScheduler both set accumulate_grad_batches"):
        trainer(callbacks).fit(UserRegression())


def test_unreadable_micro_batch_raises():
    class NoBatchSize(UserRegression):
        def train_dataloader(self):
            return DataLoader(dataset(), batch_sampler=[[0, 1], [2, 3]])  # a plain list has no batch_size

    with pytest.raises(ValueError, match=r"cannot read the per-device batch size.*GlobalBatchSize\(micro_batch_size"):
        trainer([GlobalBatchSize(global_batch_size=4)]).fit(NoBatchSize())


def test_second_fit_on_the_same_trainer_rederives_accumulation():
    fit = trainer([GlobalBatchSize(global_batch_size=16)], max_epochs=1)
    fit.fit(UserRegression(), datamodule=UserData(batch_size=4))
    assert fit.accumulate_grad_batches == 4
    fit.fit_loop.max_epochs = 2
    fit.fit(UserRegression(), datamodule=UserData(batch_size=2))  # our own 4 is not taken for a user's conflict
    assert fit.accumulate_grad_batches == 8
