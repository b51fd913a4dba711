"""PlainProgressBar: the lines it prints on a tiny model, its triggers, and that Lightning uses it as the bar."""

from __future__ import annotations

import io
import re

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ProgressBar
from torch.utils.data import DataLoader

from lit_llm.callbacks import PlainProgressBar
from lit_llm.callbacks.progress import format_duration

SEQ, MICRO_BATCH, SAMPLES = 8, 4, 16  # 4 micro-batches an epoch


class TinyTokenModel(pl.LightningModule):
    """Embedding + linear on dict batches of token ids; records each micro-batch's loss."""

    def __init__(self, log_prog_bar: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(20, 8)
        self.head = torch.nn.Linear(8, 2)
        self.losses: list[float] = []
        self.log_prog_bar = log_prog_bar

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(self.head(self.embed(batch["input_ids"]).mean(1)), batch["labels"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.losses.append(loss.item())
        if self.log_prog_bar:
            self.log("lr", 0.125, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def _loader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        data = [
            {"input_ids": torch.randint(0, 20, (SEQ,), generator=g), "labels": torch.tensor(i % 2)}
            for i in range(SAMPLES)
        ]
        return DataLoader(data, batch_size=MICRO_BATCH)

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        return self._loader()


def _fit(bar: PlainProgressBar, model: TinyTokenModel | None = None, **trainer_kwargs) -> tuple[pl.Trainer, list[str]]:
    model = model or TinyTokenModel()
    kwargs = {"max_steps": 6, "num_sanity_val_steps": 0, "limit_val_batches": 1, **trainer_kwargs}
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_model_summary=False, callbacks=[bar],
        **kwargs,
    )
    trainer.fit(model)
    return trainer, bar._stream.getvalue().splitlines()


def test_prints_a_line_every_n_steps_with_the_mean_loss_of_the_micro_batches():
    model = TinyTokenModel()
    bar = PlainProgressBar(every_n_steps=2, every_n_seconds=0, stream=io.StringIO())
    trainer, lines = _fit(bar, model, accumulate_grad_batches=2, max_steps=4)
    assert trainer.progress_bar_callback is bar  # Lightning's default bar is not added
    assert not [cb for cb in trainer.callbacks if isinstance(cb, ProgressBar) and cb is not bar]
    assert lines[0] == "train: 4 optimizer steps from step 0; a line every 2 steps"
    train = [line for line in lines if line.startswith("train step")]
    assert [line.split(" | ")[0] for line in train] == ["train step 2/4 (50%)", "train step 4/4 (100%)"]
    # two optimizer steps of two micro-batches each per line: the mean of four losses, not Lightning's loss / 2
    for line, losses in zip(train, (model.losses[0:4], model.losses[4:8])):
        fields = line.split(" | ")
        assert fields[1] == ("epoch 0" if "2/4" in fields[0] else "epoch 1")  # 2 steps an epoch
        assert fields[2] == f"loss {sum(losses) / 4:.4g}"
        assert re.fullmatch(r"[\d.e+]+ steps/s", fields[3]), fields
        assert re.fullmatch(r"[\d.e+]+k tokens/s", fields[4]), fields
        assert re.fullmatch(r"ETA \d+:\d\d:\d\d", fields[5]), fields
    assert lines[-1].startswith("train: done, step 4 after 0:00:")
    validation = [line for line in lines if line.startswith("validation")]
    assert len(validation) == 2 and re.fullmatch(r"validation at step 2 \| epoch 0 \| val_loss [\d.]+", validation[0])


def test_time_trigger_and_prog_bar_metrics():
    bar = PlainProgressBar(every_n_steps=0, every_n_seconds=1e-6, stream=io.StringIO())
    _, lines = _fit(bar, TinyTokenModel(log_prog_bar=True), max_steps=3)
    train = [line for line in lines if line.startswith("train step")]
    assert [line.split(" | ")[0] for line in train] == [f"train step {i}/3 ({i / 3:.0%})" for i in (1, 2, 3)]
    assert all(line.endswith(" | lr 0.125") for line in train)


def test_a_disabled_bar_prints_nothing():
    bar = PlainProgressBar(stream=io.StringIO())
    bar.disable()
    _, lines = _fit(bar, max_steps=2)
    assert lines == [] and not bar.is_enabled
    bar.enable()
    assert bar.is_enabled


def test_no_state_to_resume():
    # Timings are per process; nothing to restore. The checkpoint holds an empty entry that loads back.
    bar = PlainProgressBar()
    assert bar.state_dict() == {}
    bar.load_state_dict({})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every_n_steps": -1}, r"every_n_steps=-1, every_n_seconds=30.0\): intervals must be >= 0"),
        ({"every_n_seconds": -2.0}, r"intervals must be >= 0"),
        ({"every_n_steps": 0, "every_n_seconds": 0}, r"would never print; set one of them"),
    ],
)
def test_bad_intervals(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PlainProgressBar(**kwargs)


def test_format_duration():
    assert format_duration(3725.4) == "1:02:05"
    assert format_duration(0.2) == "0:00:00"
    assert format_duration(float("inf")) == "?"
