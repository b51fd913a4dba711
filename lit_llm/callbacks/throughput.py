"""Tokens/s and MFU for HF transformers: Lightning's ThroughputMonitor fed with analytic FLOPs per batch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ThroughputMonitor
from typing_extensions import override

from lit_llm.training.flops import TransformerShape, transformer_flops, transformer_shape

__all__ = ["TransformerThroughputMonitor", "batch_input_ids"]


def batch_input_ids(batch: Any, key: str = "input_ids") -> torch.Tensor:
    """The ``(B, T)`` token tensor of a batch: ``batch[key]`` of a dict / BatchEncoding, a tensor, or a tuple's first.

    Raises:
        ValueError: no 2-D tensor found; the message names the batch's type and keys.

    Example::
        >>> batch_input_ids({"input_ids": torch.zeros(2, 5, dtype=torch.long)}).shape
        torch.Size([2, 5])
    """
    found: Any = batch
    if isinstance(batch, Mapping):
        found = batch.get(key)
    elif isinstance(batch, (tuple, list)) and batch:
        found = batch[0]
    if not isinstance(found, torch.Tensor) or found.dim() != 2:
        keys = list(batch.keys()) if isinstance(batch, Mapping) else None
        raise ValueError(
            f"TransformerThroughputMonitor: cannot find a (batch, seq_len) token tensor under {key!r} in a batch of "
            f"type {type(batch).__name__} (keys {keys}); pass input_key=... naming the token ids."
        )
    return found


class TransformerThroughputMonitor(ThroughputMonitor):
    """Log samples/s, tokens/s, FLOPs/s and MFU of an HF transformer, with FLOPs from :mod:`lit_llm.training.flops`.

    Lightning's :class:`~lightning.pytorch.callbacks.ThroughputMonitor` reads ``pl_module.flops_per_batch`` on
    every batch; this callback sets that attribute before each batch from the batch's own ``(B, T)`` shape
    (forward + backward in training, forward only in validation / test / predict), so variable sequence
    lengths are counted right. It logs ``train/device/items_per_sec`` (tokens/s, padding excluded when the batch
    has an ``attention_mask``), ``train/device/flops_per_sec`` and ``train/device/mfu`` once ``window_size``
    batches are seen, through the Trainer's logger.

    Contract with the module: the HF model is ``getattr(pl_module, model_attr)`` or, when that does not exist,
    ``pl_module`` itself, and it has an HF ``config``; batches are dicts with ``input_key`` (or a ``(B, T)``
    tensor, or a tuple starting with one). A module that defines its own ``flops_per_batch`` keeps it.

    Args:
        peak_flops: peak FLOP/s of one device for the run's dtype; needed for MFU on CPU and on GPUs Lightning does
            not know (``get_available_flops`` gives the value for known GPUs when this is None).
        model_attr: attribute of the LightningModule that holds the HF model.
        input_key: key of the token ids in a dict batch.
        window_size: batches in the rolling average (>= 2); metrics appear after that many batches.

    Raises:
        ValueError: non-positive ``peak_flops`` or ``window_size`` < 2; at the first batch, a model without an HF
            config or a batch without token ids.

    Example::
        trainer = Trainer(logger=CSVLogger("runs"), callbacks=[TransformerThroughputMonitor(peak_flops=1e12)])
    """

    def __init__(
        self,
        peak_flops: float | None = None,
        model_attr: str = "model",
        input_key: str = "input_ids",
        window_size: int = 100,
    ) -> None:
        if peak_flops is not None and not peak_flops > 0:
            raise ValueError(
                f"TransformerThroughputMonitor(peak_flops={peak_flops!r}): must be > 0 FLOP/s, e.g. 3.12e14 for an "
                "A100 in bf16, or None."
            )
        if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 2:
            raise ValueError(f"TransformerThroughputMonitor(window_size={window_size!r}): must be an integer >= 2.")
        super().__init__(
            batch_size_fn=self._samples_in,  # a bound method, not a lambda: ddp_spawn pickles callbacks
            length_fn=self._tokens,
            window_size=window_size,
        )
        self.peak_flops = peak_flops
        self.model_attr = model_attr
        self.input_key = input_key
        self._shape: TransformerShape | None = None
        self._sets_flops = True

    def _samples_in(self, batch: Any) -> int:
        return int(batch_input_ids(batch, self.input_key).shape[0])

    def _tokens(self, batch: Any) -> int:
        mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
        if isinstance(mask, torch.Tensor):
            return int(mask.sum().item())
        return int(batch_input_ids(batch, self.input_key).numel())

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.peak_flops is not None:
            self.available_flops = int(self.peak_flops)
            for throughput in self._throughputs.values():
                throughput.available_flops = self.peak_flops
        # A module that computes its own FLOPs (a property or a method of its class) is trusted.
        self._sets_flops = not hasattr(type(pl_module), "flops_per_batch")
        self._shape = None  # the model may only exist after configure_model, and pruning changes it

    def _set_flops(self, pl_module: pl.LightningModule, batch: Any, training: bool) -> None:
        if not self._sets_flops:
            return
        if self._shape is None:
            model = getattr(pl_module, self.model_attr, pl_module)
            self._shape = transformer_shape(model)
        batch_size, seq_len = batch_input_ids(batch, self.input_key).shape  # (B, T)
        # nn.Module.__setattr__ is typed for Tensor | Module values only; Lightning's ThroughputMonitor reads this int.
        pl_module.flops_per_batch = transformer_flops(  # type: ignore[assignment]
            self._shape, batch_size, seq_len, training=training
        )

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._set_flops(pl_module, batch, training=True)

    @override
    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._set_flops(pl_module, batch, training=False)

    @override
    def on_test_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._set_flops(pl_module, batch, training=False)

    @override
    def on_predict_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._set_flops(pl_module, batch, training=False)
