"""SVD low-rank factorization of the transformer blocks' Linear layers before fine-tuning."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from typing_extensions import override

from lit_llm.callbacks.pruning import check_artifact_order
from lit_llm.compression.compressed_models import (
    LOW_RANK_MANIFEST,
    artifact_stats,
    write_module_artifact,
    check_artifact_dir,
    hf_model_of,
    save_low_rank,
)
from lit_llm.compression.report import first_batch, measure, task_model, update_report
from lit_llm.compression.low_rank import LowRankLinear, factorize_model

__all__ = ["LowRankFactorization"]


class LowRankFactorization(Callback):
    """Factorize Linear layers into two thinner ones (truncated SVD) at fit start, then fine-tune to recover.

    Runs right after the module's ``configure_model`` (after its ``setup``, before checkpoint restore and before
    the optimizer is built), so the optimizer trains the factors. A resumed
    run factorizes the same initial model the same way and then loads the checkpoint's factors. The compression
    report gets ``low_rank_dense`` and ``low_rank_factorized`` sections (parameters, size, latency at batch 1
    and 32 on the first training batch).

    Works on any LightningModule (layers selected by name among the module's own). Checkpoints and the HF
    export hold the factorized layers (``...query.a.weight`` / ``...query.b.weight``), which ``from_pretrained``
    cannot rebuild. So at the end of a successful fit (``export_artifact=True``) the factorized model is written to
    ``artifact_dir`` (default ``<trainer.default_root_dir>/export-low-rank``) by
    :func:`lit_llm.compression.save_low_rank`: the factors as they are (not merged back, so the files keep
    the saving), ``lit_llm_low_rank.json`` with each factorized Linear's shape and rank, ``model.onnx`` and the
    module's tokenizer. Load it with :func:`lit_llm.compression.load_low_rank`, or serve ``model.onnx``
    with onnxruntime. It is written in ``teardown``, after every ``on_fit_end`` hook (ours restore the best
    checkpoint there), so it holds the weights the module ends the fit with. A non-empty directory is refused
    at fit start.

    Contract with the module for the artifact: ``getattr(pl_module, model_attr)`` is the transformers model
    (``PreTrainedModel``), checked at fit start; ``pl_module.tokenizer``, if it is a transformers tokenizer, is
    saved with it.

    Args:
        rank: singular values kept per layer, or
        energy: fraction of squared singular values kept per layer, in (0, 1] (the rank then varies by layer).
        patterns: regexes of Linear layer names; default: the Linear layers inside the transformer blocks.
        report: add the report sections.
        export_artifact: write the factorized-model artifact at fit end.
        artifact_dir: where; None = ``<trainer.default_root_dir>/export-low-rank``. Must be new or empty.
        model_attr: attribute of the LightningModule that holds the HF model to write.
        onnx: also write ``model.onnx`` into the artifact.

    Raises:
        ValueError: neither or both of rank / energy, a rank < 1, an energy outside (0, 1]; in ``setup``, patterns
            matching no Linear layer.
        FileExistsError: at fit start, ``artifact_dir`` already holds files.
        AttributeError: at fit start, ``export_artifact=True`` and the module has no HF model at ``model_attr``.

    Example::
        trainer = Trainer(callbacks=[LowRankFactorization(energy=0.9)])
    """

    def __init__(
        self,
        rank: int | None = None,
        energy: float | None = None,
        patterns: list[str] | None = None,
        report: bool = True,
        export_artifact: bool = True,
        artifact_dir: str | None = None,
        model_attr: str = "model",
        onnx: bool = True,
    ) -> None:
        if (rank is None) == (energy is None):
            raise ValueError(
                f"LowRankFactorization(rank={rank!r}, energy={energy!r}): give exactly one, e.g. rank=64 or energy=0.9."
            )
        if rank is not None and (isinstance(rank, bool) or rank < 1):
            raise ValueError(f"LowRankFactorization(rank={rank!r}): must be an int >= 1.")
        if energy is not None and not 0.0 < energy <= 1.0:
            raise ValueError(f"LowRankFactorization(energy={energy!r}): must be in (0, 1], e.g. 0.9.")
        self.rank = rank
        self.energy = energy
        self.patterns = patterns
        self.report = report
        self.export_artifact = export_artifact
        self.artifact_dir = artifact_dir
        self.model_attr = model_attr
        self.onnx = onnx
        self.artifact_path: Path | None = None  # where the artifact was written, once it was
        self._fit_ended = False
        self.ranks: dict[str, int] = {}
        self._dense: nn.Module | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(rank=self.rank, energy=self.energy)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        # Lightning runs callbacks' setup before the module's (where our modules build the HF model), then the
        # module's configure_model, then restores a checkpoint, then builds the optimizer. Factorizing right after
        # configure_model is the one point where the model exists and neither the checkpoint nor the optimizer
        # has been touched yet, so this instance's configure_model is wrapped (and unwrapped at teardown).
        original = pl_module.configure_model

        def configure_model() -> None:
            original()
            self._factorize(trainer, pl_module)

        pl_module.configure_model = configure_model  # type: ignore[method-assign]

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_ended = False
        if self.export_artifact:  # fail now, not after the training
            hf_model_of(pl_module, self.model_attr, "LowRankFactorization")
            check_artifact_order(trainer, self, "LowRankFactorization")
            check_artifact_dir(self._artifact_target(trainer), "LowRankFactorization")

    def _artifact_target(self, trainer: pl.Trainer) -> Path:
        return Path(self.artifact_dir) if self.artifact_dir else Path(trainer.default_root_dir) / "export-low-rank"

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if "configure_model" in pl_module.__dict__:
            del pl_module.configure_model
        if self.export_artifact and self._fit_ended:
            self._fit_ended = False
            self._write_artifact(trainer, pl_module)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_ended = True  # the artifact is written in teardown, and only after a fit that ended

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # teardown is not called after a failed fit: unwrap configure_model here too.
        if "configure_model" in pl_module.__dict__:
            del pl_module.configure_model

    def _write_artifact(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning calls teardown only after a fit that ended normally, and after the module's on_fit_end (where
        # our modules restore the best checkpoint): the artifact holds the weights the module ends with.
        path = write_module_artifact(pl_module, self.model_attr, "LowRankFactorization",
                                     self._artifact_target(trainer), save_low_rank, self.onnx, trainer.is_global_zero)
        if path is None:
            return
        self.artifact_path = path
        stats = artifact_stats(self.artifact_path, LOW_RANK_MANIFEST)
        rank_zero_info(
            f"LowRankFactorization: wrote the factorized model to {self.artifact_path} ({stats['parameters']:,} "
            f"parameters, dense {stats['dense_parameters']:,}); load it with lit_llm.compression.load_low_rank."
        )
        if self.report:
            update_report(Path(trainer.default_root_dir), "low_rank_artifact", stats, trainer)

    def _factorize(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if any(isinstance(m, LowRankLinear) for m in pl_module.modules()):
            return
        if self.report and trainer.is_global_zero:
            self._dense = copy.deepcopy(task_model(pl_module))
        self.ranks = factorize_model(pl_module, self.rank, self.energy, self.patterns)
        if not self.ranks:  # a drop-in never runs and does nothing
            setting = f"rank={self.rank}" if self.rank is not None else f"energy={self.energy}"
            raise ValueError(
                f"LowRankFactorization({setting}): no Linear layer was factorized, since none would get smaller (an "
                "m x n layer shrinks only when rank < m*n/(m+n)); give a lower rank or energy."
            )
        rank_zero_info(f"LowRankFactorization: factorized {len(self.ranks)} Linear layers.")

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._dense is None:
            return
        batch = first_batch(trainer)
        if batch is not None:
            batch = {k: v.to(pl_module.device) if hasattr(v, "to") else v for k, v in batch.items()}
        run_dir = Path(trainer.default_root_dir)
        update_report(run_dir, "low_rank_dense", measure(self._dense.to(pl_module.device), batch), trainer)
        stats = measure(task_model(pl_module), batch)
        stats["layers_factorized"] = len(self.ranks)
        stats["mean_rank"] = sum(self.ranks.values()) / max(len(self.ranks), 1)
        update_report(run_dir, "low_rank_factorized", stats, trainer)
        self._dense = None  # free the copy

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"ranks": dict(self.ranks)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = dict(state_dict.get("ranks", {}))
        if self.ranks and saved and saved != self.ranks:
            raise ValueError(
                "LowRankFactorization: the checkpoint was factorized with other ranks than this run computed "
                f"({len(saved)} vs {len(self.ranks)} layers); resume with the same rank/energy and initial model."
            )
        self.ranks = saved or self.ranks
