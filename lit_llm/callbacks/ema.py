"""An exponential moving average of the weights, used for validation, checkpoints and the export."""

from __future__ import annotations

import warnings
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.utilities import rank_zero_warn
from torch.optim.swa_utils import get_ema_multi_avg_fn
from typing_extensions import override

from lit_llm.errors import InvalidArgumentError


class EMA(WeightAveraging):
    """Exponential moving average (EMA) of the weights: Lightning's ``EMAWeightAveraging`` with a one-kernel update.

    After every optimizer step the average moves toward the weights: ``ema = decay * ema + (1 - decay) * weights``
    (the first step copies them). Validation runs on the average, checkpoints store it as their ``state_dict``
    (the raw weights as ``current_model_state``, so ``--ckpt_path`` resumes both), and at the end of training the
    module holds it, so the best checkpoint and the export are the averaged model. The average holds one more fp32
    copy of the weights.

    Why not Lightning's class as it is: it updates the average one tensor at a time through ``avg_fn``, which
    allocates three full-size temporaries per tensor; torch's foreach ``lerp`` does the same sum in place. On
    all-MiniLM-L6-v2 (22.7M parameters, 2 CPU cores) an update took 149 ms that way and 9.5 ms this way, against
    a training step of about 350 ms.

    Works on any LightningModule whose weights exist when ``configure_model`` returns (ours build them from the
    datamodule there when they do not exist yet).

    Args:
        decay: weight of the old average at each update, in [0, 1); its horizon is about ``1 / (1 - decay)`` steps
            (0.995: 200 steps).
        update_every_n_steps: update after every n-th optimizer step.
        update_starting_at_step: first optimizer step (0-based) to update at; None: from the first.
        update_starting_at_epoch: also update at the end of each epoch from this one on; None: never by epoch.
        device: where the average lives (``"cpu"`` keeps it off an accelerator); None: the module's device.
        use_buffers: average the buffers as well as the parameters.

    Example::
        trainer = Trainer(callbacks=[EMA(decay=0.995)])
    """

    def __init__(
        self,
        decay: float = 0.999,
        update_every_n_steps: int = 1,
        update_starting_at_step: int | None = None,
        update_starting_at_epoch: int | None = None,
        device: torch.device | str | int | None = None,
        use_buffers: bool = True,
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise InvalidArgumentError(
                f"EMA(decay={decay!r}): must be in [0, 1); 0.999 averages over about the last 1,000 steps, "
                "0.99 over the last 100."
            )
        if update_every_n_steps < 1:
            raise InvalidArgumentError(f"EMA(update_every_n_steps={update_every_n_steps!r}): must be >= 1.")
        # Lightning's EMAWeightAveraging passes avg_fn, and AveragedModel takes one of avg_fn and multi_avg_fn.
        super().__init__(device=device, use_buffers=use_buffers, multi_avg_fn=get_ema_multi_avg_fn(decay))
        self.update_every_n_steps = update_every_n_steps
        self.update_starting_at_step = update_starting_at_step
        self.update_starting_at_epoch = update_starting_at_epoch
        self.decay = decay

    @override
    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        # The same rule as Lightning's EMAWeightAveraging.
        if step_idx is not None:
            started = self.update_starting_at_step is None or step_idx >= self.update_starting_at_step
            if started and step_idx % self.update_every_n_steps == 0:
                return True
        return epoch_idx is not None and self.update_starting_at_epoch is not None and (
            epoch_idx >= self.update_starting_at_epoch
        )

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        with warnings.catch_warnings():
            # Lightning warns of any module with a configure_model that the average is not sharded; ours only
            # build the unsharded HF model there, which is what the average copies.
            warnings.filterwarnings("ignore", message=r".*WeightAveraging doesn't support sharding model layers")
            super().setup(trainer, pl_module, stage)
        if stage == "fit" and self._average_model is not None:
            copied = sum(1 for _ in self._average_model.module.parameters())
            if copied == 0:
                raise InvalidArgumentError(
                    f"EMA: {type(pl_module).__name__} has no parameters when fit starts, so there is nothing to "
                    "average. Build the model in __init__ or in configure_model (not in setup)."
                )

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if self._average_model is None:
            # validate / test / predict --ckpt_path: the checkpoint's state_dict, which the module has loaded, is the
            # average, the model they should run; Lightning's class warns here for every such command.
            return
        super().on_load_checkpoint(trainer, pl_module, checkpoint)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "decay": self.decay}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("decay", self.decay)
        if saved != self.decay:
            rank_zero_warn(f"EMA: the checkpoint's average was made with decay={saved}, this run uses "
                           f"decay={self.decay}; the average goes on with {self.decay}.")
        super().load_state_dict(state_dict)
