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

    Every micro-batch of an optimizer step is checked (with ``accumulate_grad_batches=4`` a NaN in the first
    micro-batch poisons the accumulated gradient as surely as one in the last). The check runs right before the
    optimizer step, so the weights are never updated from that gradient and no checkpoint is written from them:
    the last good checkpoint stays the newest one. The error names the optimizer step, which micro-batch of it,
    the epoch and the batch index. (Lightning's ``EarlyStopping(check_finite=True)`` only looks at a monitored
    metric when it is validated.) Works on any LightningModule whose ``training_step`` returns the loss (a
    tensor or a dict with ``loss``), or that calls ``manual_backward``.

    Example::
        Trainer(callbacks=[StopOnNonFiniteLoss(), ModelCheckpoint(save_last=True)], accumulate_grad_batches=4)
    """

    def __init__(self) -> None:
        # The micro-batches since the last optimizer step: (batch index in the epoch, detached loss).
        self._losses: list[tuple[int, torch.Tensor]] = []
        self._batch_idx = 0

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._losses = []

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_idx = batch_idx

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        self._losses.append((self._batch_idx, loss.detach()))

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        losses, self._losses = self._losses, []
        first_bad: int | None = None
        if losses:
            # One device sync per optimizer step, not one per micro-batch.
            finite = torch.stack([torch.isfinite(loss).all() for _, loss in losses]).tolist()
            first_bad = next((i for i, ok in enumerate(finite) if not ok), None)
        # Every rank must raise together, or the others would wait forever in the next collective.
        if not trainer.strategy.reduce_boolean_decision(first_bad is not None, all=False):
            return
        where = f"at optimizer step {trainer.global_step} "
        if first_bad is None:
            raise NonFiniteLossError(
                f"non-finite training loss on another rank {where}(this rank's {len(losses)} micro-batches were "
                "finite); the weights were not updated from it and the last checkpoint is the last good one. Lower "
                "the learning rate, enable gradient clipping, or use bf16 rather than fp16."
            )
        batch_idx, loss = losses[first_bad]
        value = float(loss) if loss.numel() == 1 else loss
        raise NonFiniteLossError(
            f"non-finite training loss ({value}) {where}(micro-batch {first_bad + 1} of {len(losses)}, "
            f"epoch {trainer.current_epoch}, batch {batch_idx}); the weights were not updated from it and the last "
            "checkpoint is the last good one. Lower the learning rate, enable gradient clipping, or use bf16 rather "
            "than fp16."
        )
