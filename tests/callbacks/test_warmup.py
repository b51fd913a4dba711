"""WarmupSchedule: the exact LR at every optimizer step equals the pure function, under accumulation too."""

from __future__ import annotations

import functools
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_llm.callbacks import WarmupSchedule
from lit_llm.training.optim import build_optimizer
from lit_llm.training.schedules import lr_multiplier

BASE_LRS = (0.1, 0.025)  # two param groups, ratio 4


class TwoGroupUser(pl.LightningModule):
    """A user module that is not ours: two param groups with different base rates."""

    def __init__(self, with_scheduler: bool = False) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 1)
        self.with_scheduler = with_scheduler

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.head(self.body(x)), y)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD([
            {"params": self.body.parameters(), "lr": BASE_LRS[0]},
            {"params": self.head.parameters(), "lr": BASE_LRS[1]},
        ])
        if self.with_scheduler:
            return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)]
        return optimizer


class RecordLR(Callback):
    """Records (global_step, lr of each group) right before each optimizer step; put it after the schedule."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, list[float]]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.steps.append((trainer.global_step, [g["lr"] for g in optimizer.param_groups]))


def loader(n_batches: int, batch_size: int = 2) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_batches * batch_size, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=batch_size)


def trainer(callbacks: list[Callback], **kwargs: Any) -> pl.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
    return pl.Trainer(callbacks=callbacks, **{**defaults, **kwargs})


@pytest.mark.parametrize("accumulate", [1, 4])
@pytest.mark.parametrize(("decay", "min_lr_ratio"), [("linear", 0.0), ("cosine", 0.1)])
def test_exact_lr_every_step_matches_the_pure_function(accumulate, decay, min_lr_ratio):
    record = RecordLR()
    schedule = WarmupSchedule(warmup=3, decay=decay, min_lr_ratio=min_lr_ratio)
    trainer([schedule, record], max_steps=10, accumulate_grad_batches=accumulate).fit(
        TwoGroupUser(), loader(10 * accumulate)
    )
    assert [s for s, _ in record.steps] == list(range(10))  # one LR per optimizer step, not per batch
    for step, lrs in record.steps:
        factor = lr_multiplier(step, warmup_steps=3, total_steps=10, decay=decay, min_lr_ratio=min_lr_ratio)
        assert lrs == pytest.approx([base * factor for base in BASE_LRS], rel=1e-12, abs=0)


def test_fraction_warmup_uses_estimated_stepping_batches_with_accumulation():
    # 10 batches per epoch, accumulate 4 -> ceil(10 / 4) = 3 steps per epoch, 2 epochs -> 6 steps; 0.5 -> 3 warmup
    schedule, record = WarmupSchedule(warmup=0.5, decay="linear"), RecordLR()
    trainer([schedule, record], max_epochs=2, accumulate_grad_batches=4).fit(TwoGroupUser(), loader(10))
    assert (schedule.total_steps, schedule.warmup_steps) == (6, 3)
    assert [round(lrs[0] / BASE_LRS[0], 12) for _, lrs in record.steps] == [
        round(lr_multiplier(s, warmup_steps=3, total_steps=6), 12) for s in range(6)
    ]


def test_layerwise_rates_keep_their_ratios():
    from transformers import BertConfig, BertModel

    class LayerwiseUser(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.model = BertModel(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2,
                                              num_attention_heads=2, intermediate_size=8))

        def training_step(self, batch, batch_idx):
            return self.model(input_ids=batch[0]).last_hidden_state.pow(2).mean()

        def configure_optimizers(self):
            return build_optimizer(self.model, functools.partial(torch.optim.AdamW, lr=1e-3), layer_decay=0.5)

    record = RecordLR()
    ids = torch.randint(0, 30, (8, 5))
    fit = trainer([WarmupSchedule(warmup=2), record], max_steps=5)
    fit.fit(LayerwiseUser(), DataLoader(TensorDataset(ids), batch_size=2))
    groups = fit.optimizers[0].param_groups
    # each group's base is the optimizer lr times its depth scale: 1e-3 x {0.125, 0.25, 0.5, 1}
    assert [g["initial_lr"] for g in groups] == pytest.approx([1e-3 * g["lr_scale"] for g in groups], rel=1e-12)
    assert sorted({g["lr_scale"] for g in groups}) == [0.125, 0.25, 0.5, 1.0]
    for step, lrs in record.steps:
        factor = lr_multiplier(step, warmup_steps=2, total_steps=5)
        assert lrs == pytest.approx([1e-3 * g["lr_scale"] * factor for g in groups], rel=1e-12)


def test_resume_mid_run_gives_the_same_lr_sequence(tmp_path):
    full = RecordLR()
    torch.manual_seed(0)
    model = TwoGroupUser()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    # 4 batches per epoch, 3 epochs = 12 steps; a checkpoint at each epoch end
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    trainer([WarmupSchedule(warmup=5, decay="cosine"), full, ckpt], max_epochs=3, enable_checkpointing=True).fit(
        model, loader(4)
    )
    resumed_model = TwoGroupUser()
    resumed_model.load_state_dict(start)
    resumed = RecordLR()
    trainer([WarmupSchedule(warmup=5, decay="cosine"), resumed], max_epochs=3).fit(
        resumed_model, loader(4), ckpt_path=tmp_path / "epoch=0.ckpt"
    )
    assert [s for s, _ in resumed.steps] == list(range(4, 12))
    assert resumed.steps == full.steps[4:]
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_warns_when_the_module_also_returns_a_scheduler():
    with pytest.warns(UserWarning, match="also returns an LR scheduler"):
        trainer([WarmupSchedule(warmup=1)], max_steps=3).fit(TwoGroupUser(with_scheduler=True), loader(3))


def test_state_dict_holds_the_resolved_schedule():
    schedule = WarmupSchedule(warmup=0.25)
    trainer([schedule], max_steps=8).fit(TwoGroupUser(), loader(8))
    assert schedule.state_dict() == {"warmup_steps": 2, "total_steps": 8}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"warmup": -1}, r"WarmupSchedule\(warmup=-1\): must be >= 0"),
        ({"warmup": -0.1}, r"WarmupSchedule\(warmup=-0.1\)"),
        ({"warmup": float("nan")}, r"WarmupSchedule\(warmup=nan\)"),
        ({"warmup": "10"}, r"WarmupSchedule\(warmup='10'\)"),
        ({"decay": "exponential"}, r"WarmupSchedule\(decay='exponential'\): choose one of linear, cosine"),
        ({"min_lr_ratio": 1.5}, r"WarmupSchedule\(min_lr_ratio=1.5\): must be in \[0, 1\]"),
    ],
)
def test_bad_arguments_quote_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WarmupSchedule(**kwargs)


def test_warmup_longer_than_the_run_raises_before_training():
    model = TwoGroupUser()
    before = model.body.weight.detach().clone()
    with pytest.raises(ValueError, match=r"warmup=20 is 20 optimizer steps, not shorter than the whole run \(10 steps"):
        trainer([WarmupSchedule(warmup=20)], max_steps=10).fit(model, loader(10))
    assert torch.equal(before, model.body.weight)


def test_infinite_run_raises():
    with pytest.raises(ValueError, match="needs a finite run.*max_steps or trainer.max_epochs"):
        trainer([WarmupSchedule(warmup=2)], max_epochs=-1, max_steps=-1).fit(TwoGroupUser(), loader(2))
