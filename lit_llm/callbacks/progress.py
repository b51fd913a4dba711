"""Training progress as plain text lines, for output that goes to a pipe or a log file instead of a terminal.

Lightning's progress bars redraw one line in place; when stdout is not a terminal the rich bar draws nothing and
a run logged with ``lit-llm fit ... > train.log`` stays silent until it ends. This bar prints a new line every
``every_n_steps`` optimizer steps or ``every_n_seconds`` seconds, whichever comes first, and one line per
validation, so ``tail -f train.log`` shows where the run is.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, TextIO

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ProgressBar
from typing_extensions import override

from lit_llm.errors import InvalidArgumentError

__all__ = ["PlainProgressBar", "format_duration"]


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` of a duration, ``?`` when unknown (infinite or NaN).

    Example::
        >>> format_duration(3725.4)
        '1:02:05'
    """
    if not math.isfinite(seconds):
        return "?"
    return str(timedelta(seconds=round(max(seconds, 0.0))))


def _number(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class PlainProgressBar(ProgressBar):
    """Progress bar that prints plain lines: step, epoch, mean loss, steps/s, tokens/s and ETA.

    Being a :class:`~lightning.pytorch.callbacks.ProgressBar`, it replaces Lightning's default bar when it is in
    ``Trainer(callbacks=...)``. The ``lit-llm`` CLI installs it by itself when stdout is not a terminal and the
    config names no progress bar (and does not set ``enable_progress_bar: false``). Only global rank 0 prints.

    A training line looks like::

        train step 40/120 (33%) | epoch 1 | loss 2.314 | 9.8 steps/s | 5.0k tokens/s | ETA 0:00:08

    ``loss`` is the mean of the training losses of the micro-batches since the previous line, read from what
    ``training_step`` returns (a tensor or a dict with ``"loss"``; Lightning divides it by
    ``accumulate_grad_batches`` before the hook, this bar multiplies it back). ``tokens/s`` counts the
    ``input_ids`` of dict batches, padding included, and is left out for other batches. Metrics logged with
    ``prog_bar=True`` are appended. After each validation a line lists the ``val*`` metrics.

    Args:
        every_n_steps: print a line every this many optimizer steps; 0 prints by time only.
        every_n_seconds: also print when this many seconds passed since the previous line; 0 prints by steps only.
        stream: where to print (default ``sys.stdout`` at print time).

    Raises:
        InvalidArgumentError: (a ValueError) a negative interval, or both intervals 0.

    Example::
        trainer = Trainer(callbacks=[PlainProgressBar(every_n_steps=50, every_n_seconds=30)])
    """

    def __init__(self, *, every_n_steps: int = 50, every_n_seconds: float = 30.0, stream: TextIO | None = None) -> None:
        super().__init__()
        if every_n_steps < 0 or every_n_seconds < 0:
            raise InvalidArgumentError(
                f"PlainProgressBar(every_n_steps={every_n_steps!r}, every_n_seconds={every_n_seconds!r}): intervals "
                "must be >= 0, e.g. every_n_steps=50, every_n_seconds=30."
            )
        if every_n_steps == 0 and every_n_seconds == 0:
            raise InvalidArgumentError(
                "PlainProgressBar(every_n_steps=0, every_n_seconds=0) would never print; set one of them, "
                "e.g. every_n_steps=50."
            )
        self.every_n_steps = every_n_steps
        self.every_n_seconds = every_n_seconds
        self._stream = stream
        self._enabled = True
        self._reset_window(step=0)

    # ---------------------------------------------------------------- ProgressBar API
    @override
    def disable(self) -> None:
        self._enabled = False

    @override
    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        """Whether this bar prints (Lightning disables it on ranks other than 0)."""
        return self._enabled

    @override
    def print(self, *args: Any, **kwargs: Any) -> None:
        if self._enabled:
            print(*args, file=self._stream or sys.stdout, flush=True, **kwargs)

    # ---------------------------------------------------------------- training
    def _reset_window(self, step: int) -> None:
        self._window_start = time.monotonic()
        self._window_paused = 0.0  # seconds of validation inside the window: not training time
        self._window_step = step
        self._window_tokens = 0
        self._loss_sum: torch.Tensor | None = None  # summed on the loss's device: no sync until a line is printed
        self._loss_count = 0

    def _total_steps(self, trainer: pl.Trainer) -> float:
        try:
            return float(trainer.estimated_stepping_batches)
        except Exception:  # noqa: BLE001 - an unsized loader: the total, hence the ETA, is unknown
            return math.inf

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._train_start = time.monotonic()
        self._total = self._total_steps(trainer)
        self._reset_window(trainer.global_step)
        total = "an unknown number of" if math.isinf(self._total) else str(int(self._total))
        rules = [f"every {self.every_n_steps} steps" if self.every_n_steps else "",
                 f"every {self.every_n_seconds:g} s" if self.every_n_seconds else ""]
        when = " or ".join(r for r in rules if r)
        self.print(f"train: {total} optimizer steps from step {trainer.global_step}; a line {when}")

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._enabled:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            if pl_module.automatic_optimization:
                loss = loss * trainer.accumulate_grad_batches  # undo Lightning's normalisation (documented)
            self._loss_sum = loss.detach().float() if self._loss_sum is None else self._loss_sum + loss.detach()
            self._loss_count += 1
        input_ids = batch.get("input_ids") if isinstance(batch, Mapping) else None
        if isinstance(input_ids, torch.Tensor):
            self._window_tokens += input_ids.numel()
        step = trainer.global_step
        if step == self._window_step:
            return  # mid-accumulation: no optimizer step since the last line
        now = time.monotonic()
        due = (
            (self.every_n_steps and step - self._window_step >= self.every_n_steps)
            or (self.every_n_seconds and now - self._window_start >= self.every_n_seconds)
            or step >= self._total
        )
        if due:
            self.print(self._train_line(trainer, pl_module, step, now))
            self._reset_window(step)

    def _train_line(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int, now: float) -> str:
        elapsed = max(now - self._window_start - self._window_paused, 1e-9)
        rate = (step - self._window_step) / elapsed
        total = "?" if math.isinf(self._total) else str(int(self._total))
        parts = [f"train step {step}/{total}" + ("" if math.isinf(self._total) else f" ({step / self._total:.0%})")]
        parts.append(f"epoch {trainer.current_epoch}")  # 0-based, as Lightning counts
        if self._loss_sum is not None:
            parts.append(f"loss {float(self._loss_sum) / self._loss_count:.4g}")
        parts.append(f"{rate:.3g} steps/s")
        if self._window_tokens:
            parts.append(f"{self._window_tokens / elapsed / 1000:.3g}k tokens/s")
        remaining = (self._total - step) / rate if rate > 0 else math.inf
        parts.append(f"ETA {format_duration(remaining)}")
        extra = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}
        parts += [f"{k} {_number(v)}" for k, v in extra.items()]
        return " | ".join(parts)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        elapsed = time.monotonic() - self._train_start
        self.print(f"train: done, step {trainer.global_step} after {format_duration(elapsed)}")

    # ---------------------------------------------------------------- evaluation
    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validation_start = time.monotonic()

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val")}
        shown = " | ".join(f"{k} {_number(v)}" for k, v in sorted(metrics.items()))
        where = f"validation at step {trainer.global_step} | epoch {trainer.current_epoch}"
        self.print(where + (f" | {shown}" if shown else ""))
        self._window_paused += time.monotonic() - self._validation_start
