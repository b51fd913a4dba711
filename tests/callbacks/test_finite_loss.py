"""StopOnNonFiniteLoss under gradient accumulation: a NaN in any micro-batch of a step stops the run before the step."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from lit_llm.callbacks import NonFiniteLossError, StopOnNonFiniteLoss

ACCUMULATE = 4
BAD_STEP = 2  # the optimizer step whose micro-batch turns NaN


class _UserModule(pl.LightningModule):
    """A user's module: its loss turns NaN (or inf) on one training batch."""

    def __init__(self, bad_batch: int, bad_value: float = float("nan")) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 1)
        self.bad_batch = bad_batch
        self.bad_value = bad_value

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.layer(batch).pow(2).mean()
        return loss * self.bad_value if batch_idx == self.bad_batch else loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(torch.randn(64, 4, generator=torch.Generator().manual_seed(0)), batch_size=2)


@pytest.mark.parametrize("position", range(ACCUMULATE))
def test_nan_in_any_micro_batch_stops_before_the_step(position, tmp_path):
    bad_batch = BAD_STEP * ACCUMULATE + position
    module = _UserModule(bad_batch)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=6,
        accumulate_grad_batches=ACCUMULATE,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[StopOnNonFiniteLoss(), ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1)],
        default_root_dir=tmp_path,
    )
    expected = (
        rf"non-finite training loss \(nan\) at optimizer step {BAD_STEP} "
        rf"\(micro-batch {position + 1} of {ACCUMULATE}, epoch 0, batch {bad_batch}\)"
    )
    with pytest.raises(NonFiniteLossError, match=expected):
        trainer.fit(module)
    assert trainer.global_step == BAD_STEP  # the step with the NaN micro-batch was never taken
    assert all(torch.isfinite(p).all() for p in module.parameters())
    checkpoints = sorted(tmp_path.glob("*.ckpt"))
    assert checkpoints  # steps 1 and 2 were saved
    for path in checkpoints:
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values()), path.name


def test_inf_in_the_first_micro_batch_is_caught_too():
    module = _UserModule(bad_batch=0, bad_value=float("inf"))
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, accumulate_grad_batches=ACCUMULATE, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[StopOnNonFiniteLoss()])
    expected = r"\(inf\) at optimizer step 0 \(micro-batch 1 of 4, epoch 0, batch 0\)"
    with pytest.raises(NonFiniteLossError, match=expected):
        trainer.fit(module)
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_finite_losses_do_not_stop_and_the_check_resets_each_step():
    module = _UserModule(bad_batch=-1)
    trainer = pl.Trainer(accelerator="cpu", max_steps=4, accumulate_grad_batches=ACCUMULATE, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[StopOnNonFiniteLoss()])
    trainer.fit(module)
    assert trainer.global_step == 4
