"""Post-training int8 quantization before test (or after fit), written out as a deployable artifact, with optional
quantization-aware fine-tuning."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from typing_extensions import override

from lit_llm.compression.report import (
    example_inputs,
    first_batch,
    latency_ms,
    measure,
    spread_batches,
    task_model,
    update_report,
)
from lit_llm.hf import check_export_dir
from lit_llm.compression.quantization import (
    BACKENDS,
    DEFAULT_SKIP,
    Backend,
    FakeQuantLinear,
    add_fake_quant,
    check_backend,
    quantizable_linear_names,
    quantize_bitsandbytes,
    remove_fake_quant,
)
from lit_llm.compression.quantized_artifacts import (
    INT8_ONNX_FILE,
    OnnxRuntimeModel,
    export_bitsandbytes,
    export_int8_onnx,
    load_int8_onnx,
    onnx_int8_model,
)

__all__ = ["Int8Quantization"]


class Int8Quantization(Callback):
    """Quantize the Linear layers to int8, write the int8 model as a deployable artifact, and test / predict with it.

    Backends:

    - ``onnxruntime`` (default; int8 for CPU serving): the float model is exported to ONNX and its Linear MatMuls
      quantized by ONNX Runtime (int8 weights, one scale per output row; activations per batch). The artifact is a
      directory with ``model.int8.onnx``, ``config.json`` and the tokenizer that ``onnxruntime.InferenceSession``
      serves (see :mod:`lit_llm.compression.quantized_artifacts`). ``trainer.test`` / ``predict`` then run that same
      ONNX Runtime session on CPU (inputs are moved there, logits back), so the reported int8 metric is the artifact's.
    - ``bitsandbytes`` (int8 for CUDA serving): Linear layers become ``bnb.nn.Linear8bitLt`` (LLM.int8) in place;
      the artifact is an HF directory with bitsandbytes weights and the ``quantization_config`` that
      ``from_pretrained`` needs (bitsandbytes >= 0.45 and accelerate; CPU too).

    Layers whose name matches ``skip`` stay float (the task head by default).

    **Contract with the LightningModule** (ours or a user's): the HF model is in ``pl_module.model`` (an
    ``nn.Module``; for the artifact a transformers ``PreTrainedModel``) and test / predict batches are dicts with
    ``input_ids`` (plus optional ``attention_mask``, ``token_type_ids``, ``labels``) that ``test_step`` passes to
    ``self.model(...)``, reading ``.logits`` / ``.loss``. With ``onnxruntime``, quantizing *replaces*
    ``pl_module.model`` by an :class:`~lit_llm.compression.quantized_artifacts.OnnxRuntimeModel` (inference only, no
    parameters); the float weights live on in the checkpoints and float export. The tokenizer saved in the artifact
    is ``pl_module.tokenizer`` or else ``trainer.datamodule.tokenizer`` (a warning when there is none). Unmet
    parts of the contract raise at fit / test start.

    Artifact: written at fit end (after fake-quant layers are removed and our modules restored their best
    checkpoint, so it holds the weights of the float export) to ``artifact_dir``, by default
    ``<trainer.default_root_dir>/export-int8``, on global rank zero; its path is logged and recorded in the
    report. A non-empty directory is refused at fit start (nothing is ever overwritten).
    ``export_artifact=False`` turns it off.

    When: with ``apply_on="test"`` the float model is trained, checkpointed and exported as usual, and
    ``trainer.test`` / ``trainer.predict`` run the int8 model (quantized from the weights present then, after any
    ``ckpt_path`` is loaded: the artifact's session when those are the fit-end weights, else a fresh one). With
    ``apply_on="fit_end"`` the module switches to int8 in ``teardown`` after fit (after our modules exported the
    float HF model).

    Quantization-aware fine-tuning (``qat_start``): from that point of training on, Linear layers compute with
    int8-rounded weights and inputs (straight-through gradients), so the weights adapt to the int8 grid.
    Removed again at fit end, so checkpoints and exports are plain.

    The compression report gets ``int8_float`` and ``int8_quantized`` sections: parameters, size on disk,
    latency at batch 1 and 32 (from a test batch in the middle), the share of ``compare_batches`` test
    batches' predictions (argmax of the logits) on which int8 agrees with float, and at test end the
    ``test/*`` metrics of the int8 model. For the float metric on the same data, run ``trainer.test`` once
    without this callback (our benchmark does).

    Args:
        backend: ``onnxruntime`` (CPU) or ``bitsandbytes`` (CUDA). ``torch`` (``torch.ao.quantization``,
            deprecated by PyTorch) was removed.
        skip: regexes of Linear layer names to keep in float; default: task heads (``classifier``, ``lm_head``...).
        apply_on: ``test`` (quantize at test / predict start) or ``fit_end``.
        qat_start: start of fake-quant fine-tuning, as a fraction of the run in [0, 1) or an optimizer step
            (int); None disables QAT.
        compare_batches: test batches used for the agreement figure, spread over the test loader (0 skips it).
        report: write the report sections.
        artifact_dir: where fit end writes the int8 artifact; None: ``<default_root_dir>/export-int8``.
        export_artifact: write the artifact at fit end.

    Raises:
        ValueError: an unknown backend or ``apply_on``, a bad ``qat_start``; at fit / test start, a module without
            ``.model`` or without a Linear layer to quantize.
        FileExistsError: at fit start, ``artifact_dir`` already holds files.
        ImportError: onnxruntime / bitsandbytes missing (with the install command).

    Example::
        trainer = Trainer(callbacks=[Int8Quantization(qat_start=0.8)])
        trainer.fit(model, datamodule=dm)   # writes <default_root_dir>/export-int8/model.int8.onnx
        trainer.test(model, datamodule=dm)  # runs that int8 model
    """

    def __init__(
        self,
        backend: Backend = "onnxruntime",
        skip: list[str] | None = None,
        apply_on: Literal["test", "fit_end"] = "test",
        qat_start: float | int | None = None,
        compare_batches: int = 4,
        report: bool = True,
        artifact_dir: str | None = None,
        export_artifact: bool = True,
    ) -> None:
        if backend not in BACKENDS:
            check_backend(backend, "cpu")  # raises, naming the replacement of a removed backend
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
        self.artifact_dir = artifact_dir
        self.export_artifact = export_artifact
        self.quantized = False
        self.qat_step: int | None = None
        self.artifact_path: Path | None = None  # the directory written at fit end
        self._artifact_weights: torch.Tensor | None = None  # fingerprint of the float weights it was made from
        self._fit_ended = False

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(backend=self.backend, qat_start=self.qat_start)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        check_backend(self.backend, trainer.strategy.root_device)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if isinstance(self.qat_start, float):
            total = trainer.estimated_stepping_batches
            if not math.isfinite(total):
                raise ValueError(
                    f"Int8Quantization(qat_start={self.qat_start!r}): a fraction needs a finite run; set "
                    "trainer.max_steps or max_epochs, or give qat_start as an optimizer step."
                )
            self.qat_step = int(self.qat_start * total)
        elif self.qat_start is not None:
            self.qat_step = int(self.qat_start)
        # Fail before training, not after it: the model contract and the artifact directory.
        self._int8_source(pl_module)
        if self.export_artifact:
            check_export_dir(self._artifact_path(trainer))

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
        self._fit_ended = True  # teardown also runs after a failed fit, which must write and switch nothing

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not self._fit_ended:
            return
        self._fit_ended = False
        # Here, not in on_fit_end: our modules restore their best checkpoint in their own on_fit_end, which runs
        # after the callbacks', and the artifact must hold the weights the float export holds.
        if self.export_artifact and trainer.is_global_zero:
            self._write_artifact(trainer, pl_module)
        if self.apply_on == "fit_end":
            self._quantize(trainer, pl_module)

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._quantize(trainer, pl_module)

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._quantize(trainer, pl_module)

    def _artifact_path(self, trainer: pl.Trainer) -> Path:
        return Path(self.artifact_dir) if self.artifact_dir else Path(trainer.default_root_dir) / "export-int8"

    def _int8_source(self, pl_module: pl.LightningModule) -> nn.Module:
        """The float model to quantize, checked against the contract (see the class docstring)."""
        inner = getattr(pl_module, "model", None)
        if isinstance(inner, OnnxRuntimeModel):
            return inner
        if not isinstance(inner, nn.Module) and (self.backend == "onnxruntime" or self.export_artifact):
            raise ValueError(
                f"Int8Quantization(backend={self.backend!r}) needs the HF model in `{type(pl_module).__name__}.model` "
                f"(got {type(inner).__name__}): it exports that model and, with onnxruntime, puts the int8 session "
                "there for test/predict. Store your transformers model as `self.model`."
            )
        model = task_model(pl_module)
        quantizable_linear_names(model, self.skip)  # raises when there is nothing to quantize
        return model

    def _write_artifact(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = self._int8_source(pl_module)
        path = self._artifact_path(trainer)
        tokenizer = _tokenizer(trainer, pl_module)
        if tokenizer is None:
            rank_zero_warn(
                f"Int8Quantization: no tokenizer found (pl_module.tokenizer or trainer.datamodule.tokenizer); the "
                f"artifact in {path} has none, so save your tokenizer into it before serving."
            )
        if self.backend == "onnxruntime":
            export_int8_onnx(model, path, tokenizer, self.skip)
            how = f"onnxruntime.InferenceSession('{path / INT8_ONNX_FILE}')"
        else:
            export_bitsandbytes(model, path, tokenizer, bits=8, skip=self.skip)
            how = "from_pretrained on CUDA"
        self.artifact_path = path
        self._artifact_weights = _fingerprint(model)
        rank_zero_info(f"Int8Quantization: int8 model for serving written to {path} (load with {how}).")
        if self.report:
            update_report(Path(trainer.default_root_dir), "int8_quantized", {"artifact": str(path)})

    def _quantize(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.quantized:
            return
        model = self._int8_source(pl_module)
        batch = first_batch(trainer) if self.report else None
        batch = _to_device(batch, pl_module.device)
        measuring = self.report and trainer.is_global_zero
        float_stats: dict[str, Any] = {}
        if measuring:
            float_stats = measure(model, batch)
            update_report(Path(trainer.default_root_dir), "int8_float", float_stats, trainer)
        int8: nn.Module
        float_model: nn.Module | None
        if self.backend == "onnxruntime":
            session, source = self._onnx_model(model)
            float_model = model  # untouched: the int8 session replaces it in the module
            pl_module.model = int8 = session
            n = session.int8_layers
        else:
            float_model = copy.deepcopy(model).eval() if measuring and self.compare_batches else None
            n = quantize_bitsandbytes(pl_module.eval(), self.skip)
            int8, source = model, "in place"
        self.quantized = True
        rank_zero_info(f"Int8Quantization: {n} Linear layers now int8 ({self.backend}, {source}).")
        if measuring:
            stats = self._int8_stats(int8, batch, float_stats)
            stats.update({"backend": self.backend, "layers": n})
            if self.compare_batches and batch is not None and float_model is not None:
                stats["prediction_agreement"] = self._agreement(trainer, float_model, int8, pl_module.device)
            update_report(Path(trainer.default_root_dir), "int8_quantized", stats, trainer)

    def _onnx_model(self, model: nn.Module) -> tuple[OnnxRuntimeModel, str]:
        # Evaluate the artifact's own file when the weights are still those it was made from.
        if isinstance(model, OnnxRuntimeModel):
            return model, "already int8"
        weights = self._artifact_weights
        if self.artifact_path is not None and weights is not None and torch.equal(_fingerprint(model), weights):
            return load_int8_onnx(self.artifact_path), f"the artifact in {self.artifact_path}"
        return onnx_int8_model(model, self.skip), "quantized from the current weights"

    def _int8_stats(self, int8: nn.Module, batch: Any, float_stats: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(int8, OnnxRuntimeModel):
            return measure(int8, batch)
        # An ONNX session has no torch parameters: the size is the .onnx file's, the parameter count the model's.
        stats: dict[str, Any] = {
            "parameters": float_stats["parameters"],
            "nonzero_parameters": float_stats["nonzero_parameters"],
            "size_mb": round(int8.size_bytes / 2**20, 3),
        }
        if batch is not None:
            for bs in (1, 32):
                stats[f"latency_ms_bs{bs}"] = round(latency_ms(int8, example_inputs(batch, bs)), 3)
        return stats

    @torch.inference_mode()
    def _agreement(self, trainer: pl.Trainer, float_model: nn.Module, int8_model: nn.Module, device: Any) -> float:
        loaders = trainer.test_dataloaders or trainer.predict_dataloaders
        if loaders is None:
            return float("nan")
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        same = total = 0
        for batch in spread_batches(loader, self.compare_batches):
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


def _tokenizer(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
    """The tokenizer to ship with the artifact: the module's, else the datamodule's (our modules' contract)."""
    for owner in (pl_module, getattr(trainer, "datamodule", None)):
        try:
            tokenizer = getattr(owner, "tokenizer", None)
        except (AttributeError, ValueError, OSError):  # our modules' property raises before setup
            tokenizer = None
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            return tokenizer
    return None


def _fingerprint(model: nn.Module) -> torch.Tensor:
    # One float64 sum per parameter: tells "these are the weights the artifact was made from" (a reloaded
    # checkpoint differs) without keeping a copy of them.
    return torch.stack([p.detach().double().sum().cpu() for p in model.parameters()])


def _to_device(batch: Any, device: torch.device) -> Any:
    if batch is None:
        return None
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
