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

from lit_llm.compression_report import first_batch, measure, task_model, update_report
from lit_llm.low_rank import LowRankLinear, factorize_model

__all__ = ["LowRankFactorization"]


class LowRankFactorization(Callback):
    """Factorize Linear layers into two thinner ones (truncated SVD) at fit start, then fine-tune to recover.

    Runs right after the module's ``configure_model`` (after its ``setup``, before checkpoint restore and before
    the optimizer is built), so the optimizer trains the factors. A resumed
    run factorizes the same initial model the same way and then loads the checkpoint's factors. The compression
    report gets ``low_rank_dense`` and ``low_rank_factorized`` sections (parameters, size, latency at batch 1
    and 32 on the first training batch).

    Works on any LightningModule (layers selected by name among the module's own). Checkpoints and the HF
    export hold the factorized layers (``...query.a.weight`` / ``...query.b.weight``); to get an HF-loadable
    dense model call :func:`lit_llm.low_rank.merge_low_rank` on it first.

    Args:
        rank: singular values kept per layer, or
        energy: fraction of squared singular values kept per layer, in (0, 1] (the rank then varies by layer).
        patterns: regexes of Linear layer names; default: the Linear layers inside the transformer blocks.
        report: add the report sections.

    Raises:
        ValueError: neither or both of rank / energy, a rank < 1, an energy outside (0, 1]; in ``setup``, patterns
            matching no Linear layer.

    Example::
        trainer = Trainer(callbacks=[LowRankFactorization(energy=0.9)])
    """

    def __init__(
        self,
        rank: int | None = None,
        energy: float | None = None,
        patterns: list[str] | None = None,
        report: bool = True,
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
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and "configure_model" in pl_module.__dict__:
            del pl_module.configure_model

    def _factorize(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if any(isinstance(m, LowRankLinear) for m in pl_module.modules()):
            return
        if self.report and trainer.is_global_zero:
            self._dense = copy.deepcopy(task_model(pl_module))
        self.ranks = factorize_model(pl_module, self.rank, self.energy, self.patterns)
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
