"""What every lit-llm module does at fit end: take the best checkpoint's weights, then export them in HF format."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_llm.training.checkpointing import load_checkpoint_file, require_lightning_checkpoint
from lit_llm.compression.compressed_models import gathered_state_dict
from lit_llm.hf import export_pretrained

__all__ = ["run_dir", "output_dir", "restore_best_checkpoint", "export_best"]


def run_dir(module: pl.LightningModule) -> Path:
    """The trainer's ``default_root_dir`` (the run directory under the CLI), or the working directory."""
    return Path(module.trainer.default_root_dir) if module._trainer is not None else Path.cwd()


def output_dir(module: pl.LightningModule, configured: str | None, name: str) -> Path:
    """``configured`` if given, else ``<run dir>/<name>``."""
    return Path(configured) if configured else run_dir(module) / name


def restore_best_checkpoint(module: pl.LightningModule) -> str | None:
    """Load the best checkpoint of the trainer's ModelCheckpoint into ``module`` (on every rank, so the replicas
    stay identical) through :func:`lit_llm.training.checkpointing.load_checkpoint_file`, the loader of every checkpoint
    (``weights_only=True``); returns its path, or None when there is none.

    A sharded best checkpoint (a directory) is not loaded into the sharded module: a warning says so and the
    module keeps its last weights; ``lit-llm export`` consolidates that checkpoint.

    Raises:
        CheckpointError: the best checkpoint is unreadable, holds Python objects, or is not a Lightning checkpoint.
    """
    checkpoint = getattr(module.trainer, "checkpoint_callback", None)
    best = getattr(checkpoint, "best_model_path", "") if checkpoint is not None else ""
    if not best:
        return None
    if Path(best).is_dir():
        rank_zero_warn(
            f"the best checkpoint {best} is sharded; the model keeps its last weights. Export the best ones with "
            f"`lit-llm export {best} OUT_DIR`."
        )
        return None
    if not Path(best).is_file():
        return None
    state = require_lightning_checkpoint(load_checkpoint_file(best, map_location="cpu"), best)["state_dict"]
    module.load_state_dict(state)
    score = getattr(checkpoint, "best_model_score", None)
    rank_zero_info(f"loaded the best checkpoint {best}" + (f" (score {float(score):.4f})" if score is not None else ""))
    return best


def export_best(
    module: pl.LightningModule,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    export_dir: Path,
    export: bool = True,
) -> Path | None:
    """At fit end: restore the best weights, then (rank zero, when ``export``) ``save_pretrained`` model + tokenizer.

    Returns:
        The export directory, or None where nothing was exported (other ranks, ``export=False``).
    """
    restore_best_checkpoint(module)
    if not export:
        return None
    state = gathered_state_dict(model)  # FSDP2 shards into full tensors: a collective, so every rank runs it
    if not module.trainer.is_global_zero:
        return None
    path = export_pretrained(model, tokenizer, export_dir, state_dict=state)
    rank_zero_info(f"exported HF model + tokenizer to {path}")
    return path
