"""Stop a run at the first non-finite training loss, naming the step, before anything is saved from it."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

__all__ = ["NonFiniteLossError", "StopOnNonFiniteLoss"]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class StopOnNonFiniteLoss(Callback):
    """Raise at the first NaN / inf training loss on any rank, so the run stops with a message naming the step.

    It checks right after the backward pass and before the optimizer step, so the weights are never updated
    from that loss and no checkpoint is written from them: the last good checkpoint stays the newest one.
    (Lightning's ``EarlyStopping(check_finite=True)`` only looks at a monitored metric when it is validated.)
    Works on any LightningModule whose ``training_step`` returns the loss (a tensor or a dict with ``loss``).

    Example::
        Trainer(callbacks=[StopOnNonFiniteLoss(), ModelCheckpoint(save_last=True)])
    """

    def __init__(self) -> None:
        self._loss: torch.Tensor | None = None

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        self._loss = loss.detach()

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        bad = self._loss is not None and not bool(torch.isfinite(self._loss).all())
        # Every rank must raise together, or the others would wait forever in the next collective.
        if trainer.strategy.reduce_boolean_decision(bad, all=False):
            value = float(self._loss) if self._loss is not None and self._loss.numel() == 1 else self._loss
            raise NonFiniteLossError(
                f"non-finite training loss ({value}) at optimizer step {trainer.global_step} "
                f"(epoch {trainer.current_epoch}, batch {trainer.fit_loop.epoch_loop.batch_progress.current.ready}); "
                "the weights were not updated from it and the last checkpoint is the last good one. Lower the "
                "learning rate, enable gradient clipping, or use bf16 rather than fp16."
            )
