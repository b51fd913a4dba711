"""Linear LR warmup then decay, set on every optimizer step from the trainer's own step counter."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lit_llm.training.schedules import DECAYS, DecayName, lr_multiplier, resolve_warmup_steps

__all__ = ["WarmupSchedule"]

_BASE_KEY = "initial_lr"  # the key torch's LR schedulers use, so it survives optimizer state_dict round trips


class WarmupSchedule(Callback):
    """LR warmup then decay, applied to every param group of every optimizer at every optimizer step.

    Lightning has no warmup of its own (PL #328, #4902) and a scheduler given through LightningCLI steps per
    epoch (PL #15340). This callback computes the rate from ``trainer.global_step`` and
    ``trainer.estimated_stepping_batches``, so it is exact under gradient accumulation and after a resume,
    and scales each param group from that group's own base rate (layer-wise rates keep their ratios).
    The schedule itself is :func:`lit_llm.training.schedules.lr_multiplier`.

    Works on any LightningModule; it needs a finite run (``max_steps`` or ``max_epochs``).

    Args:
        warmup: warmup length in optimizer steps (int), or a fraction of the run (float in [0, 1)).
        decay: ``linear``, ``cosine``, ``constant`` or ``inverse_sqrt``.
        min_lr_ratio: the rate at the end of the run as a fraction of the base rate, in [0, 1].
        log: log the first param group's rate as ``train/lr``.

    Raises:
        ValueError: a negative warmup, an unknown decay, ``min_lr_ratio`` outside [0, 1]; at fit start, a warmup
            not shorter than the run.

    Example::
        trainer = Trainer(max_steps=1000, callbacks=[WarmupSchedule(warmup=0.06, decay="linear")])
    """

    def __init__(
        self,
        warmup: int | float = 0.06,
        decay: DecayName = "linear",
        min_lr_ratio: float = 0.0,
        log: bool = True,
    ) -> None:
        if isinstance(warmup, bool) or not isinstance(warmup, (int, float)) or warmup < 0 or math.isnan(warmup):
            raise ValueError(
                f"WarmupSchedule(warmup={warmup!r}): must be >= 0, a number of optimizer steps or a fraction in [0, 1)."
            )
        if decay not in DECAYS:
            raise ValueError(f"WarmupSchedule(decay={decay!r}): choose one of {', '.join(DECAYS)}.")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"WarmupSchedule(min_lr_ratio={min_lr_ratio!r}): must be in [0, 1].")
        self.warmup = warmup
        self.decay: DecayName = decay
        self.min_lr_ratio = min_lr_ratio
        self.log = log
        self.warmup_steps = 0
        self.total_steps = 0

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(warmup=self.warmup, decay=self.decay, min_lr_ratio=self.min_lr_ratio)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError(
                "WarmupSchedule needs a finite run to decay over: set trainer.max_steps or trainer.max_epochs."
            )
        self.total_steps = int(total)
        self.warmup_steps = resolve_warmup_steps(self.warmup, self.total_steps)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.lr_scheduler_configs:
            rank_zero_warn(
                "WarmupSchedule: the module also returns an LR scheduler; both will change the learning rate. "
                "Drop the scheduler from configure_optimizers (or the CLI's --lr_scheduler) or remove this callback."
            )
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                # After a resume the optimizer state already holds the base rate; keep it.
                group.setdefault(_BASE_KEY, group["lr"])
        self._apply(trainer)

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        lr = self._apply(trainer, [optimizer])
        if self.log and lr is not None:
            pl_module.log("train/lr", lr, on_step=True, on_epoch=False, prog_bar=False, rank_zero_only=True)

    def _apply(self, trainer: pl.Trainer, optimizers: list[Any] | None = None) -> float | None:
        factor = lr_multiplier(
            trainer.global_step,
            warmup_steps=self.warmup_steps,
            total_steps=self.total_steps,
            decay=self.decay,
            min_lr_ratio=self.min_lr_ratio,
        )
        first: float | None = None
        for optimizer in optimizers if optimizers is not None else trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = group.setdefault(_BASE_KEY, group["lr"]) * factor
                first = group["lr"] if first is None else first
        return first

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"warmup_steps": self.warmup_steps, "total_steps": self.total_steps}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # The schedule is a function of trainer.global_step, recomputed at fit start; a different run length
        # after a resume (a changed max_steps) is legitimate, so the saved values are only restored as a default.
        self.warmup_steps = int(state_dict.get("warmup_steps", self.warmup_steps))
        self.total_steps = int(state_dict.get("total_steps", self.total_steps))
