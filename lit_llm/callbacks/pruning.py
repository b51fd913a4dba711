"""Gradual magnitude pruning on an optimizer-step schedule, with masks enforced after every step."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lit_llm.compression.compressed_models import (
    PRUNING_MANIFEST,
    artifact_stats,
    write_module_artifact,
    check_artifact_dir,
    hf_model_of,
    save_pruned,
)
from lit_llm.compression.report import first_batch, measure, task_model, update_report
from lit_llm.compression.low_rank import LowRankLinear
from lit_llm.compression.pruning import (
    Masks,
    apply_masks,
    cubic_sparsity,
    find_structured_units,
    find_target_linears,
    magnitude_masks,
    measure_sparsity,
    shrink_structured,
    structured_masks,
)

__all__ = ["Pruning", "check_artifact_order"]


def check_artifact_order(trainer: pl.Trainer, callback: Callback, owner: str) -> None:
    """Refuse an ``Int8Quantization(apply_on="fit_end")`` listed before ``callback``: it switches the model to int8
    in its ``teardown``, which Lightning runs in list order, so ``callback``'s artifact would see int8 layers.

    Raises:
        ValueError: such an Int8Quantization comes first in ``trainer.callbacks``.
    """
    from lit_llm.callbacks.quantization import Int8Quantization

    callbacks = list(trainer.callbacks)  # type: ignore[attr-defined]
    before = callbacks[: callbacks.index(callback)] if callback in callbacks else []
    if any(isinstance(cb, Int8Quantization) and cb.apply_on == "fit_end" for cb in before):
        raise ValueError(
            f"{owner} writes its artifact from the float model at fit end, but Int8Quantization(apply_on='fit_end') "
            f"comes before it in trainer.callbacks and switches the model to int8 first; list {owner} before "
            "Int8Quantization, or set export_artifact=False."
        )

PruningMode = Literal["unstructured", "heads", "neurons", "heads_and_neurons"]


class Pruning(Callback):
    """Gradual magnitude pruning (Zhu & Gupta 2017) of the transformer blocks' Linear layers.

    The target sparsity follows the cubic schedule from ``start_step`` to ``end_step`` (optimizer steps, so it is
    exact under gradient accumulation; ``end_step=None`` or ``== start_step`` prunes in one shot). Masks are
    recomputed every ``frequency`` steps and written into the weights after *every* optimizer step, so pruned
    weights stay exactly zero even though Adam's momentum keeps pushing them. ``pruning/sparsity`` is measured
    by counting exact zeros in the target weights (not the requested amount, unlike Lightning's ``ModelPruning``,
    PL #13595). Masks are saved in checkpoints and restored on resume.

    Unstructured (``mode="unstructured"``) prunes single weights, ranked globally or per layer. Structured modes
    remove whole attention heads and / or FFN neurons of BERT-family blocks by weight norm; at the end of fit
    (and before a test or predict that did not follow one), with ``shrink=True``, the zeroed heads / neurons are
    sliced away so the layers are really smaller and faster, also for a callback listed after this one
    (``Int8Quantization(apply_on="fit_end")`` then quantizes the smaller model: one artifact for both). The
    weights are always plain tensors (no ``weight_orig`` parametrization), so the checkpoint and the exported HF
    model are a plain model.

    At the end of a successful fit (``export_artifact=True``) the pruned model is written to ``artifact_dir`` (default
    ``<trainer.default_root_dir>/export-pruned``) by :func:`lit_llm.compression.save_pruned`: zeroed heads and
    FFN neurons sliced away so the files are really smaller, ``lit_llm_pruning.json`` with each block's widths,
    ``model.onnx`` and the module's tokenizer; load it with :func:`lit_llm.compression.load_pruned` or serve
    ``model.onnx`` with onnxruntime (unstructured pruning: the same directory, dense with the zeros kept, which
    ``from_pretrained`` also loads). It is written in ``teardown``, after every ``on_fit_end`` hook, so it holds
    the weights the module ends the fit with (ours restore the best checkpoint in their ``on_fit_end``); the
    module is shrunk right after it is written. A non-empty directory is refused at fit start.

    Contract with the module for the artifact: ``getattr(pl_module, model_attr)`` is the transformers model
    (``PreTrainedModel``), checked at fit start; ``pl_module.tokenizer``, if it is a transformers tokenizer, is
    saved with it.

    Works on any LightningModule: it prunes the module's own parameters, selected by name pattern.
    Under DDP every rank computes the same masks from the same weights; under FSDP2 (``ModelParallelStrategy``)
    scores are gathered to rank-wide full tensors and each rank writes its own shard.

    Args:
        amount: final fraction pruned, in [0, 1): of the target weights (unstructured) or of the heads /
            neurons (structured).
        start_step: optimizer step at which pruning starts.
        end_step: optimizer step at which ``amount`` is reached; None = one-shot at ``start_step``.
        frequency: recompute the masks every this many optimizer steps (they are enforced every step).
        mode: ``unstructured``, ``heads``, ``neurons`` or ``heads_and_neurons``.
        scope: ``global`` (rank across layers) or ``per_layer``.
        patterns: regexes (or globs) selecting target Linear layers by name (unstructured only); default:
            the Linear layers inside the transformer blocks (``layer.<i>.``, ``h.<i>.``, ``layers.<i>.``),
            never embeddings or the task head.
        shrink: structured modes only: slice pruned heads / neurons away at fit end and before test and predict.
        report: add a ``pruning`` section to the run's compression report at fit end.
        export_artifact: write the pruned-model artifact at fit end.
        artifact_dir: where; None = ``<trainer.default_root_dir>/export-pruned``. Must be new or empty.
        model_attr: attribute of the LightningModule that holds the HF model to write.
        onnx: also write ``model.onnx`` into the artifact.

    Raises:
        ValueError: an amount outside [0, 1), ``end_step < start_step``, ``frequency < 1``, an unknown mode or
            scope; at fit start, a pattern that matches no Linear layer or a structured mode on a non-BERT model.
        FileExistsError: at fit start, ``artifact_dir`` already holds files.
        AttributeError: at fit start, ``export_artifact=True`` and the module has no HF model at ``model_attr``.

    Example::
        trainer = Trainer(max_steps=1000, callbacks=[Pruning(amount=0.8, start_step=100, end_step=700)])
    """

    def __init__(
        self,
        amount: float = 0.5,
        start_step: int = 0,
        end_step: int | None = None,
        frequency: int = 10,
        mode: PruningMode = "unstructured",
        scope: Literal["global", "per_layer"] = "global",
        patterns: list[str] | None = None,
        shrink: bool = True,
        report: bool = True,
        export_artifact: bool = True,
        artifact_dir: str | None = None,
        model_attr: str = "model",
        onnx: bool = True,
    ) -> None:
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0.0 <= amount < 1.0:
            raise ValueError(f"Pruning(amount={amount!r}): must be in [0, 1), e.g. 0.5 for 50% sparsity.")
        if start_step < 0:
            raise ValueError(f"Pruning(start_step={start_step!r}): must be >= 0.")
        if end_step is not None and end_step < start_step:
            raise ValueError(f"Pruning(end_step={end_step!r}): must be >= start_step={start_step}.")
        if frequency < 1:
            raise ValueError(f"Pruning(frequency={frequency!r}): must be >= 1 (optimizer steps between updates).")
        if mode not in ("unstructured", "heads", "neurons", "heads_and_neurons"):
            raise ValueError(
                f"Pruning(mode={mode!r}): choose 'unstructured', 'heads', 'neurons' or 'heads_and_neurons'."
            )
        if scope not in ("global", "per_layer"):
            raise ValueError(f"Pruning(scope={scope!r}): choose 'global' or 'per_layer'.")
        if patterns is not None and mode != "unstructured":
            raise ValueError(f"Pruning(patterns={patterns!r}): patterns select layers for unstructured pruning only.")
        self.amount = float(amount)
        self.start_step = start_step
        self.end_step = start_step if end_step is None else end_step
        self.frequency = frequency
        self.mode: PruningMode = mode
        self.scope: Literal["global", "per_layer"] = scope
        self.patterns = patterns
        self.shrink = shrink
        self.report = report
        self.export_artifact = export_artifact
        self.artifact_dir = artifact_dir
        self.model_attr = model_attr
        self.onnx = onnx
        self.artifact_path: Path | None = None  # where the artifact was written, once it was
        self._shrunk = False  # the zeroed heads / neurons were sliced away (at fit end, or at test / predict)
        self._fit_ended = False
        self.masks: Masks = {}
        self.final_masks: Masks = {}  # the masks in force at fit end, kept for inspection
        self.current_amount = 0.0
        self.last_update_step = -1

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(amount=self.amount, mode=self.mode, patterns=self.patterns)

    def target_amount(self, step: int) -> float:
        """The scheduled fraction to prune at optimizer step ``step``."""
        return cubic_sparsity(step, self.amount, self.start_step, self.end_step)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Check the targets before any training step. Not in setup: Lightning runs callbacks' setup before the
        # module's, and our modules build their HF model in their setup.
        self._shrunk = False
        if self.mode == "unstructured":
            find_target_linears(pl_module, self.patterns)
        else:
            find_structured_units(pl_module)
        self._fit_ended = False
        if self.export_artifact:  # fail now, not after the training
            model = hf_model_of(pl_module, self.model_attr, "Pruning")
            if any(isinstance(m, LowRankLinear) for m in model.modules()):
                raise ValueError(
                    "Pruning(export_artifact=True): the model has LowRankLinear layers (LowRankFactorization), which "
                    "the pruned artifact cannot hold. Set export_artifact=False here: LowRankFactorization's "
                    "artifact (export-low-rank/) holds the factorized model with the pruned zeros."
                )
            check_artifact_order(trainer, self, "Pruning")
            check_artifact_dir(self._artifact_target(trainer), "Pruning")

    def _artifact_target(self, trainer: pl.Trainer) -> Path:
        return Path(self.artifact_dir) if self.artifact_dir else Path(trainer.default_root_dir) / "export-pruned"

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Lightning calls teardown only after a fit that ended normally, and after the module's on_fit_end (where
        # our modules restore the best checkpoint): the artifact holds the weights the module ends with.
        if stage != "fit" or not self._fit_ended:
            return
        self._fit_ended = False
        if self.export_artifact:
            self._write_artifact(trainer, pl_module)
        # Shrink now, on every rank: a callback listed after this one (Int8Quantization at fit end) then
        # compresses the smaller model, so the combined recipe ends in one artifact that is smaller still.
        self._shrink(trainer, pl_module)

    def _write_artifact(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = write_module_artifact(pl_module, self.model_attr, "Pruning", self._artifact_target(trainer),
                                     save_pruned, self.onnx, trainer.is_global_zero)
        if path is None:
            return
        self.artifact_path = path
        stats = artifact_stats(self.artifact_path, PRUNING_MANIFEST)
        rank_zero_info(
            f"Pruning: wrote the pruned model to {self.artifact_path} ({stats['parameters']:,} parameters, "
            f"dense {stats['dense_parameters']:,}); load it with lit_llm.compression.load_pruned."
        )
        if self.report:
            update_report(Path(trainer.default_root_dir), "pruning_artifact", stats, trainer)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.masks:  # resumed: the weights are already zero there, this also re-checks the names
            apply_masks(pl_module, self.masks)
        self._maybe_update(trainer, pl_module)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Runs after the optimizer step of this batch (if it stepped): re-zero what the step moved.
        self._maybe_update(trainer, pl_module)
        if self.masks:
            apply_masks(pl_module, self.masks)
            sparsity = self.measured_sparsity(trainer, pl_module)
            pl_module.log("pruning/sparsity", sparsity, on_step=True, on_epoch=False, rank_zero_only=True)
            pl_module.log("pruning/target", self.current_amount, on_step=True, on_epoch=False, rank_zero_only=True)

    def _maybe_update(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        if step < self.start_step or step == self.last_update_step:
            return
        target = self.target_amount(step)
        due = (step - self.start_step) % self.frequency == 0 or step >= self.end_step
        if not due or (target == self.current_amount and self.masks):
            return
        if self.mode == "unstructured":
            self.masks = magnitude_masks(pl_module, target, self.patterns, self.scope, previous=self.masks)
        else:
            heads = target if self.mode in ("heads", "heads_and_neurons") else 0.0
            neurons = target if self.mode in ("neurons", "heads_and_neurons") else 0.0
            self.masks = structured_masks(pl_module, heads, neurons, self.scope, previous=self.masks)
        self.current_amount = target
        self.last_update_step = step
        apply_masks(pl_module, self.masks)

    def measured_sparsity(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float:
        """Fraction of exact zeros in the masked weights, summed over ranks when parameters are sharded."""
        keys = [k for k in self.masks if k.endswith("weight")]
        zeros, total = measure_sparsity(pl_module, keys)
        params = dict(pl_module.named_parameters())
        if keys and hasattr(params[keys[0]], "to_local"):
            counts = trainer.strategy.reduce(torch.tensor([zeros, total], dtype=torch.float64), reduce_op="sum")
            zeros, total = int(counts[0]), int(counts[1])
        return zeros / max(total, 1)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_ended = True  # the artifact is written in teardown, and only after a fit that ended
        if not self.masks:
            return
        apply_masks(pl_module, self.masks)
        sparsity = self.measured_sparsity(trainer, pl_module)
        rank_zero_info(f"Pruning: {sparsity:.1%} of the target weights are zero (asked {self.current_amount:.1%}).")
        if self.report and trainer.is_global_zero:
            model = task_model(pl_module)
            stats = measure(model, batch=None)
            stats.update({"mode": self.mode, "target_amount": self.current_amount, "measured_sparsity": sparsity})
            stats.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
            update_report(Path(trainer.default_root_dir), "pruning", stats, trainer)
        # Pruning is permanent from here: the weights are plain tensors with zeros; the masks are dropped so a
        # later fit on the same model starts afresh instead of enforcing stale masks.
        self.final_masks, self.masks = self.masks, {}

    def _shrink(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.shrink or self.mode == "unstructured" or self._shrunk:
            return
        self._shrunk = True
        removed = shrink_structured(pl_module)
        rank_zero_info(f"Pruning: shrank the model, removed {removed}.")
        if self.report and trainer.is_global_zero and any(removed.values()):
            stats = measure(task_model(pl_module), batch=first_batch(trainer))
            update_report(Path(trainer.default_root_dir), "pruning_shrunk", {**stats, **removed}, trainer)

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._shrink(trainer, pl_module)

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._shrink(trainer, pl_module)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "masks": {k: v.detach().cpu() for k, v in self.masks.items()},
            "current_amount": self.current_amount,
            "last_update_step": self.last_update_step,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.masks = dict(state_dict["masks"])
        self.current_amount = float(state_dict["current_amount"])
        self.last_update_step = int(state_dict["last_update_step"])
