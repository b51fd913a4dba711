"""A fixed global batch size; gradient accumulation follows the device count, so the optimization does not."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, GradientAccumulationScheduler
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

__all__ = ["GlobalBatchSize", "accumulation_for", "data_parallel_size", "micro_batch_size_of"]


def accumulation_for(global_batch_size: int, micro_batch_size: int, data_parallel_size: int) -> int:
    """Gradient-accumulation steps so that ``micro * devices * accumulation == global``.

    Args:
        global_batch_size: samples per optimizer step, summed over all devices.
        micro_batch_size: samples per forward pass on one device (the dataloader's ``batch_size``).
        data_parallel_size: number of data-parallel replicas (the world size for DDP).

    Raises:
        ValueError: when the global batch is not a multiple of ``micro * devices``; the message proposes the
            nearest global batch sizes that work.

    Example::
        >>> accumulation_for(256, micro_batch_size=16, data_parallel_size=4)
        4
    """
    if micro_batch_size < 1 or data_parallel_size < 1:
        raise ValueError(
            f"micro_batch_size={micro_batch_size!r} and data_parallel_size={data_parallel_size!r} must both be >= 1."
        )
    per_pass = micro_batch_size * data_parallel_size
    if global_batch_size % per_pass:
        lower = max(per_pass, global_batch_size // per_pass * per_pass)
        upper = (global_batch_size // per_pass + 1) * per_pass
        raise ValueError(
            f"GlobalBatchSize(global_batch_size={global_batch_size}) is not a multiple of micro batch "
            f"{micro_batch_size} x {data_parallel_size} device(s) = {per_pass}: use global_batch_size={lower} or "
            f"{upper}, or change the dataloader's batch_size."
        )
    return global_batch_size // per_pass


def data_parallel_size(trainer: pl.Trainer) -> int:
    """Number of replicas that each see different data: the sampler's ``num_replicas``, else the world size.

    Tensor-parallel ranks share a batch, so with ``ModelParallelStrategy`` this is smaller than the world size.
    """
    kwargs = getattr(trainer.strategy, "distributed_sampler_kwargs", None) or {}
    return int(kwargs.get("num_replicas", trainer.world_size))


def micro_batch_size_of(trainer: pl.Trainer) -> int | None:
    """Per-device batch size from the datamodule's ``batch_size`` (attribute or hparam), else the train dataloader.

    Loading the train dataloader here is what ``trainer.estimated_stepping_batches`` does too; the datamodule
    attribute is tried first because it costs nothing.
    """
    # Trainer sets ``datamodule`` and ``callbacks`` from its connectors, so its class does not declare them.
    datamodule: pl.LightningDataModule | None = getattr(trainer, "datamodule", None)
    if datamodule is not None:
        hparams = getattr(datamodule, "hparams", {})
        for value in (getattr(datamodule, "batch_size", None), hparams.get("batch_size")):
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    if trainer.train_dataloader is None:
        trainer.fit_loop.setup_data()
    loader = trainer.train_dataloader
    for dl in getattr(loader, "flattened", [loader]) if loader is not None else []:
        size = getattr(dl, "batch_size", None)
        if size is None:  # a custom batch_sampler: torch leaves DataLoader.batch_size at None
            size = getattr(getattr(dl, "batch_sampler", None), "batch_size", None)
        if isinstance(size, int):
            return size
    return None


class GlobalBatchSize(Callback):
    """Keep the number of samples per optimizer step fixed; ``accumulate_grad_batches`` follows the device count.

    At ``setup`` it sets ``trainer.accumulate_grad_batches = global / (micro_batch * data_parallel_size)``, so
    a run on 1 device and on 8 devices takes the same optimizer steps on the same amount of data. It runs before
    ``configure_optimizers`` and every ``on_fit_start``, so ``trainer.estimated_stepping_batches`` (and the
    :class:`~lit_llm.callbacks.WarmupSchedule`) already see the new accumulation.

    Contract with the module / data: the per-device micro batch is, in this order, ``micro_batch_size`` if given,
    the datamodule's ``batch_size`` attribute or hparam, else the train dataloader's ``batch_size`` (the dataloader
    is then loaded at setup, as ``estimated_stepping_batches`` would). Leave the Trainer's
    ``accumulate_grad_batches`` at 1: a different value conflicts with this callback and raises.

    Args:
        global_batch_size: samples per optimizer step summed over all devices, >= 1.
        micro_batch_size: per-device batch size, when it cannot be read from the data (see the contract).
        log: log ``train/global_batch_size`` and ``train/accumulate_grad_batches`` each optimizer step.

    Raises:
        ValueError: a non-positive size; at setup, a global batch that ``micro * devices`` does not divide, an
            unreadable micro batch, or a Trainer whose ``accumulate_grad_batches`` is already set otherwise.

    Example::
        # a dataloader batch_size of 16 on 4 devices -> accumulate_grad_batches 4
        trainer = Trainer(devices=4, callbacks=[GlobalBatchSize(global_batch_size=256)])
    """

    def __init__(self, global_batch_size: int, micro_batch_size: int | None = None, log: bool = True) -> None:
        for name, value in (("global_batch_size", global_batch_size), ("micro_batch_size", micro_batch_size)):
            if value is None and name == "micro_batch_size":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GlobalBatchSize({name}={value!r}): must be an integer >= 1, e.g. 256.")
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.log = log
        self.accumulate_grad_batches = 1
        self.world_size = 1
        self.micro_batch_size_used: int | None = None
        # (id of the trainer, value we set on it): a second fit() on that trainer sees our own value, not the user's
        self._set_on: tuple[int, int] | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(global_batch_size=self.global_batch_size)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        callbacks: list[Callback] = getattr(trainer, "callbacks", [])  # set by Lightning's CallbackConnector
        if any(isinstance(cb, GradientAccumulationScheduler) for cb in callbacks):
            raise ValueError(
                "GlobalBatchSize and GradientAccumulationScheduler both set accumulate_grad_batches; keep only one."
            )
        requested = trainer.accumulate_grad_batches
        if self._set_on is not None and self._set_on == (id(trainer), requested):
            requested = 1
        micro = self.micro_batch_size or micro_batch_size_of(trainer)
        if micro is None:
            raise ValueError(
                "GlobalBatchSize: cannot read the per-device batch size: the datamodule has no 'batch_size' and the "
                "train dataloader has none; pass GlobalBatchSize(micro_batch_size=...)."
            )
        self.world_size = data_parallel_size(trainer)
        accumulation = accumulation_for(self.global_batch_size, micro, self.world_size)
        if requested not in (1, accumulation):
            raise ValueError(
                f"Trainer(accumulate_grad_batches={requested}) conflicts with GlobalBatchSize("
                f"global_batch_size={self.global_batch_size}), which needs {accumulation} for micro batch {micro} x "
                f"{self.world_size} device(s); leave accumulate_grad_batches at 1."
            )
        self.micro_batch_size_used = micro
        self.accumulate_grad_batches = accumulation
        # Lightning 2.x keeps accumulation as a plain Trainer attribute, read by the epoch loop and by
        # estimated_stepping_batches each time, so setting it before configure_optimizers is enough.
        trainer.accumulate_grad_batches = accumulation
        self._set_on = (id(trainer), accumulation)
        rank_zero_info(
            f"GlobalBatchSize: {self.global_batch_size} = micro batch {micro} x {self.world_size} device(s) x "
            f"accumulate_grad_batches {accumulation}"
        )

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if self.log:
            pl_module.log("train/global_batch_size", float(self.global_batch_size), on_step=True, on_epoch=False)
            pl_module.log(
                "train/accumulate_grad_batches", float(self.accumulate_grad_batches), on_step=True, on_epoch=False
            )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "global_batch_size": self.global_batch_size,
            "accumulate_grad_batches": self.accumulate_grad_batches,
            "world_size": self.world_size,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Accumulation is re-derived at setup from the current device count (that is the point of the callback);
        # a changed global batch on resume is allowed but said out loud.
        if state_dict.get("global_batch_size") not in (None, self.global_batch_size):
            rank_zero_info(
                f"GlobalBatchSize: resuming a run trained with global_batch_size={state_dict['global_batch_size']} "
                f"at {self.global_batch_size}."
            )
        self.loaded_state = dict(state_dict)
