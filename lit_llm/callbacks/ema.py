"""An exponential moving average of the weights, used for validation, checkpoints and the export."""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, WeightAveraging
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch.optim.swa_utils import get_ema_multi_avg_fn
from typing_extensions import override

from lit_llm.errors import InvalidArgumentError


class EMA(EMAWeightAveraging):
    """Exponential moving average (EMA) of the weights: Lightning's ``EMAWeightAveraging`` with a one-kernel update.

    After every optimizer step the average moves toward the weights: ``ema = decay * ema + (1 - decay) * weights``
    (the first step copies them). Validation runs on the average, checkpoints store it as their ``state_dict``
    (the raw weights as ``current_model_state``, so ``--ckpt_path`` resumes both), and at the end of training the
    module holds it, so the best checkpoint and the export are the averaged model. The average holds one more fp32
    copy of the weights.

    Why not Lightning's class as it is: it updates the average one tensor at a time through ``avg_fn``, which
    allocates three full-size temporaries per tensor; torch's foreach ``lerp`` does the same sum in place. On
    all-MiniLM-L6-v2 (22.7M parameters, 2 CPU cores) an update took 74.7 ms that way and 9.3 ms this way, against
    a bf16 training step of about 320 ms (``benchmarks/ema_update.md``). Integer buffers (position ids) are copied,
    not averaged: a float average of equal integers can round down.

    Works on any LightningModule whose weights exist when ``configure_model`` returns (ours build them from the
    datamodule there when they do not exist yet), on one device or under DDP. Callbacks that change the model in
    ``configure_model`` (``LoRA``, ``LowRankFactorization``) go before EMA in ``trainer.callbacks``.

    Args:
        decay: weight of the old average at each update, in [0, 1); its horizon is about ``1 / (1 - decay)`` steps
            (0.995: 200 steps).
        update_every_n_steps: update after every n-th optimizer step.
        update_starting_at_step: first optimizer step (0-based) to update at; None: from the first.
        update_starting_at_epoch: also update at the end of each epoch from this one on; None: never by epoch.
        device: where the average lives (``"cpu"`` keeps it off an accelerator); None: the module's device.
        use_buffers: average the buffers as well as the parameters.

    Under a sharded strategy (FSDP, FSDP2, DeepSpeed) EMA is off for the run, with a warning: it keeps a full
    copy of the model.

    Raises:
        InvalidArgumentError: a decay outside [0, 1) or ``update_every_n_steps`` < 1; at fit start, a second
            weight-averaging callback, a module with no parameters, or a model that changed after EMA copied it.

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
        super().__init__(device=device, use_buffers=use_buffers, decay=decay,
                         update_every_n_steps=update_every_n_steps, update_starting_at_step=update_starting_at_step,
                         update_starting_at_epoch=update_starting_at_epoch)
        # The AveragedModel arguments the parent keeps: its per-tensor avg_fn out (AveragedModel takes one of the
        # two), the in-place update in.
        del self._kwargs["avg_fn"]
        self._kwargs["multi_avg_fn"] = ema_update(decay)
        self.decay = decay
        self._off = False  # True for a run under a sharded strategy

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # A fresh start for every run of this instance (a sweep reuses it; a failed fit skips teardown): a resumed
        # fit gets its counters back from load_state_dict, which runs after setup.
        self._off, self._average_model = False, None
        self._latest_update_step, self._latest_update_epoch = 0, -1
        if stage == "fit" and self._sharded(trainer):
            return
        if stage == "fit":
            self._check_trainer(trainer)
        with warnings.catch_warnings():
            # Lightning warns of any module with a configure_model that the average is not sharded: EMA is off
            # under sharded strategies, and ours only build the unsharded HF model there.
            warnings.filterwarnings("ignore", message=r".*WeightAveraging doesn't support sharding model layers")
            try:
                super().setup(trainer, pl_module, stage)
            except TypeError:  # deepcopy refused an attribute that is not part of the network
                with _without_uncopyable_attributes(pl_module):
                    super().setup(trainer, pl_module, stage)
        if stage == "fit" and self._average_model is not None:
            copied = sum(1 for _ in self._average_model.module.parameters())
            if copied == 0:
                raise InvalidArgumentError(
                    f"EMA: {type(pl_module).__name__} has no parameters when fit starts, so there is nothing to "
                    "average. Build the model in __init__ or in configure_model (not in setup)."
                )

    def _sharded(self, trainer: pl.Trainer) -> bool:
        """Switch EMA off for this run under a sharded strategy, saying so: the config stays usable there."""
        if not isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy, DeepSpeedStrategy)):
            return False
        rank_zero_warn(
            f"EMA is off for this run: it keeps a full, unsharded copy of the model and cannot follow a sharded "
            f"strategy ({type(trainer.strategy).__name__}). Validation, checkpoints and the export use the raw "
            "weights. Train with DDP or on one device to average them."
        )
        self._off = True
        return True

    def _check_trainer(self, trainer: pl.Trainer) -> None:
        callbacks = getattr(trainer, "callbacks", [])  # a Trainer property that mypy does not see
        averaging = [type(cb).__name__ for cb in callbacks if isinstance(cb, WeightAveraging)]
        if len(averaging) > 1:
            raise InvalidArgumentError(
                f"trainer.callbacks has {len(averaging)} weight-averaging callbacks ({', '.join(averaging)}): each "
                "puts its average in the checkpoint's state_dict, so keep one."
            )

    @override
    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return not self._off and super().should_update(step_idx, epoch_idx)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # No update yet (a run shorter than update_starting_at_step): the copy is the start, not an average.
        if not self._off and self._average_model is not None and int(self._average_model.n_averaged) > 0:
            super().on_train_end(trainer, pl_module)

    @override
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if not self._off:
            super().on_save_checkpoint(trainer, pl_module, checkpoint)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._off:
            return
        # A callback listed after EMA that changes the model in configure_model (LoRA, LowRankFactorization) runs
        # after EMA copied it: the average would pair tensors of another model.
        assert self._average_model is not None
        copied = {name: tuple(p.shape) for name, p in self._average_model.module.named_parameters()}
        now = {name: tuple(p.shape) for name, p in pl_module.named_parameters()}
        if copied != now:
            changed = sorted(set(copied) ^ set(now)) or sorted(n for n in now if copied[n] != now[n])
            raise InvalidArgumentError(
                f"EMA: the model changed after EMA copied it ({changed[0]}, and {len(changed) - 1} more): list EMA "
                "after the callbacks that change the model (LoRA, LowRankFactorization) in trainer.callbacks."
            )

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if self._average_model is None:
            # validate / test / predict --ckpt_path (setup makes an average for fit only, and clears the last one):
            # the checkpoint's state_dict, which the module has loaded, is the average, the model they should run.
            # (Lightning's class would load the raw weights there, from current_model_state, in the process that
            # fitted, and warns in a new one.)
            return
        super().on_load_checkpoint(trainer, pl_module, checkpoint)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._average_model = None  # the module holds the average since train end: free the copy

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._average_model = None  # teardown is not called after a failed fit

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "decay": self.decay}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("decay", self.decay)
        if saved != self.decay and self._average_model is not None:  # a resumed fit, not a test of its checkpoint
            rank_zero_warn(f"EMA: the checkpoint's average was made with decay={saved}, this run uses "
                           f"decay={self.decay}; the average goes on with {self.decay}.")
        super().load_state_dict(state_dict)


@contextlib.contextmanager
def _without_uncopyable_attributes(module: pl.LightningModule) -> Iterator[None]:
    """Hide, while Lightning deep-copies the module for the average, the plain attributes that cannot be copied.

    The average needs only the parameters and buffers; an optimizer factory that LightningCLI builds (a
    ``functools.partial``) can hold a lock under DDP, and deep-copying it then fails.
    """
    hidden = {}
    for name, value in list(vars(module).items()):
        if name in ("_parameters", "_buffers", "_modules", "_trainer"):
            continue
        try:
            copy.deepcopy(value)
        except Exception:  # noqa: BLE001 - any value deepcopy refuses is shared instead of copied
            hidden[name] = vars(module).pop(name)
    try:
        yield
    finally:
        vars(module).update(hidden)


def ema_update(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], Any], None]:
    """An ``AveragedModel`` ``multi_avg_fn``: ``ema = decay * ema + (1 - decay) * weights`` in place on float tensors
    (torch's foreach ``lerp``), a copy for the others (integer buffers such as position ids, which a float average
    can round down: 3 x 0.9 + 3 x 0.1 is 2.9999998 in float32).

    Example::
        AveragedModel(model, use_buffers=True, multi_avg_fn=ema_update(0.995))
    """
    lerp = get_ema_multi_avg_fn(decay)

    @torch.no_grad()
    def update(averages: list[torch.Tensor], current: list[torch.Tensor], n_averaged: Any) -> None:
        # AveragedModel groups the tensors by device and dtype: each call's lists hold one dtype.
        if torch.is_floating_point(averages[0]) or torch.is_complex(averages[0]):
            lerp(averages, current, n_averaged)
        else:
            torch._foreach_copy_(averages, current)

    return update
