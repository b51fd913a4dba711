"""Post-training int8 quantization before test (or after fit), with optional quantization-aware fine-tuning."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from typing_extensions import override

from lit_llm.compression_report import example_inputs, first_batch, measure, task_model, update_report
from lit_llm.quantization import (
    DEFAULT_SKIP,
    Backend,
    FakeQuantLinear,
    add_fake_quant,
    check_backend,
    quantize_int8,
    remove_fake_quant,
)

__all__ = ["Int8Quantization"]


class Int8Quantization(Callback):
    """Quantize the Linear layers to int8 before test / predict (default) or right after fit.

    Backends: ``torch`` (dynamic int8, CPU only, the fast one on CPU) and ``bitsandbytes`` (LLM.int8
    ``Linear8bitLt``, CPU and CUDA with bitsandbytes >= 0.45; Lightning's ``BitsandbytesPrecision`` is
    CUDA-only). Layers whose name matches ``skip`` stay in float (the task head by default).

    With ``apply_on="test"`` the float model is trained, checkpointed and exported as usual, and
    ``trainer.test`` / ``trainer.predict`` then run the int8 model (after any ``ckpt_path`` is loaded). With
    ``apply_on="fit_end"`` the model is quantized in ``teardown`` after fit (after our modules exported the
    float HF model, which HF can reload; an int8 model cannot be reloaded by ``from_pretrained``).

    Quantization-aware fine-tuning (``qat_start``): from that point of training on, Linear layers compute with
    int8-rounded weights and inputs (straight-through gradients), so the weights adapt to the int8 grid.
    Removed again at fit end, so checkpoints and exports are plain.

    The compression report gets ``int8_float`` and ``int8_quantized`` sections: parameters, size on disk,
    latency at batch 1 and 32 (from the first test batch), the share of the first ``compare_batches`` test
    batches' predictions (argmax of the logits) on which int8 agrees with float, and at test end the
    ``test/*`` metrics of the int8 model. For the float metric on the same data, run ``trainer.test`` once
    without this callback (our benchmark does).

    Works on any LightningModule; the report's latency and agreement need dict batches with ``input_ids``
    and a ``model`` attribute (our modules' HF model) or a module that takes ``input_ids=...``.

    Args:
        backend: ``torch`` or ``bitsandbytes``.
        skip: regexes of Linear layer names to keep in float; default: task heads (``classifier``, ``lm_head``...).
        apply_on: ``test`` (quantize at test / predict start) or ``fit_end``.
        qat_start: start of fake-quant fine-tuning, as a fraction of the run in [0, 1) or an optimizer step
            (int); None disables QAT.
        compare_batches: test batches used for the agreement figure (0 skips it).
        report: write the report sections.

    Raises:
        ValueError: an unknown backend or ``apply_on``, a bad ``qat_start``; in ``setup``, a backend that cannot run
            on the trainer's device.
        ImportError: bitsandbytes missing (with the install command).

    Example::
        trainer = Trainer(callbacks=[Int8Quantization(backend="torch", qat_start=0.8)])
        trainer.fit(model, datamodule=dm)
        trainer.test(model, datamodule=dm)  # runs the int8 model
    """

    def __init__(
        self,
        backend: Backend = "torch",
        skip: list[str] | None = None,
        apply_on: Literal["test", "fit_end"] = "test",
        qat_start: float | int | None = None,
        compare_batches: int = 4,
        report: bool = True,
    ) -> None:
        if backend not in ("torch", "bitsandbytes"):
            raise ValueError(f"Int8Quantization(backend={backend!r}): choose 'torch' or 'bitsandbytes'.")
        if apply_on not in ("test", "fit_end"):
            raise ValueError(f"Int8Quantization(apply_on={apply_on!r}): choose 'test' or 'fit_end'.")
        if qat_start is not None and (
            isinstance(qat_start, bool)
            or qat_start < 0
            or (isinstance(qat_start, float) and (qat_start >= 1.0 or math.isnan(qat_start)))
        ):
            raise ValueError(
                f"Int8Quantization(qat_start={qat_start!r}): give a fraction of the run in [0, 1) (e.g. 0.8 for the "
                "last 20%) or an optimizer step >= 0, or None for no QAT."
            )
        if compare_batches < 0:
            raise ValueError(f"Int8Quantization(compare_batches={compare_batches!r}): must be >= 0.")
        self.backend: Backend = backend
        self.skip = list(DEFAULT_SKIP if skip is None else skip)
        self.apply_on = apply_on
        self.qat_start = qat_start
        self.compare_batches = compare_batches
        self.report = report
        self.quantized = False
        self.qat_step: int | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(backend=self.backend, qat_start=self.qat_start)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        check_backend(self.backend, trainer.strategy.root_device)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.qat_start is None:
            return
        if isinstance(self.qat_start, float):
            total = trainer.estimated_stepping_batches
            if not math.isfinite(total):
                raise ValueError(
                    f"Int8Quantization(qat_start={self.qat_start!r}): a fraction needs a finite run; set "
                    "trainer.max_steps or max_epochs, or give qat_start as an optimizer step."
                )
            self.qat_step = int(self.qat_start * total)
        else:
            self.qat_step = int(self.qat_start)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.qat_step is None or trainer.global_step < self.qat_step:
            return
        if not any(isinstance(m, FakeQuantLinear) for m in pl_module.modules()):
            n = add_fake_quant(pl_module, self.skip)
            rank_zero_info(f"Int8Quantization: fake-quant fine-tuning from step {trainer.global_step} ({n} layers).")

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Before our modules' on_fit_end exports: the export must hold plain Linear layers.
        remove_fake_quant(pl_module)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self.apply_on == "fit_end":
            self._quantize(trainer, pl_module)

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._quantize(trainer, pl_module)

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._quantize(trainer, pl_module)

    def _quantize(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.quantized:
            return
        model = task_model(pl_module)
        batch = first_batch(trainer) if self.report else None
        batch = _to_device(batch, pl_module.device)
        float_copy = None
        if self.report and trainer.is_global_zero:
            stats = measure(model, batch)
            update_report(Path(trainer.default_root_dir), "int8_float", stats, trainer)
            if self.compare_batches and batch is not None:
                import copy

                float_copy = copy.deepcopy(model).eval()
        n = quantize_int8(pl_module, self.backend, self.skip)
        self.quantized = True
        rank_zero_info(f"Int8Quantization: {n} Linear layers now int8 ({self.backend}).")
        if self.report and trainer.is_global_zero:
            stats = measure(model, batch)
            stats.update({"backend": self.backend, "layers": n})
            if float_copy is not None:
                stats["prediction_agreement"] = self._agreement(trainer, float_copy, model, pl_module.device)
            update_report(Path(trainer.default_root_dir), "int8_quantized", stats, trainer)

    @torch.inference_mode()
    def _agreement(self, trainer: pl.Trainer, float_model: nn.Module, int8_model: nn.Module, device: Any) -> float:
        loaders = trainer.test_dataloaders or trainer.predict_dataloaders
        if loaders is None:
            return float("nan")
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        same = total = 0
        for i, batch in enumerate(loader):
            if i >= self.compare_batches:
                break
            inputs = example_inputs(_to_device(batch, device), batch["input_ids"].shape[0])
            a = float_model(**inputs).logits.argmax(-1)
            b = int8_model(**inputs).logits.argmax(-1)
            same += int((a == b).sum())
            total += a.numel()
        return same / max(total, 1)

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.report and trainer.is_global_zero:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
            if metrics:
                update_report(Path(trainer.default_root_dir), "int8_quantized", metrics, trainer)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"qat_step": self.qat_step}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.qat_step = state_dict.get("qat_step")


def _to_device(batch: Any, device: torch.device) -> Any:
    if batch is None:
        return None
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
