"""What the masked- and causal-LM modules share, as functions and one metric: the model and tokenizer from the
module's arguments or the datamodule, the exact token-weighted loss across accumulation and ranks, token-weighted
evaluation metrics and the test report."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import Metric
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_llm.hf import ModelSpec, load_tokenizer
from lit_llm.modules.building import build_model, report_path
from lit_llm.training.token_loss import StepTokenNormalizer

__all__ = [
    "TOKENIZER_STATE_KEY",
    "TokenStats",
    "build_language_model",
    "check_block_size",
    "exact_step_loss",
    "finish_eval_epoch",
    "log_train_step",
    "max_positions",
    "normalize_step",
    "restore_datamodule_tokenizer",
    "save_lm_report",
    "store_datamodule_tokenizer",
    "tokenizer_files",
    "tokenizer_from_files",
]

# Where a language model whose tokenizer came from the datamodule (e.g. one it trained on the corpus) keeps that
# tokenizer in its checkpoints: without it, `lit-llm export` and `load_from_checkpoint` could not size the model.
TOKENIZER_STATE_KEY = "lit_llm_tokenizer"
_SAFE_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def max_positions(config: Any) -> int | None:
    """The longest sequence a model's position embeddings allow (None if unbounded, e.g. rotary)."""
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def build_language_model(
    owner: str, auto_class: Any, spec: ModelSpec, tokenizer: PreTrainedTokenizerBase | None, *,
    gradient_checkpointing: bool, compile: bool,
) -> PreTrainedModel:
    """The model for ``tokenizer`` (the module's own, else the datamodule's, e.g. one it trained on the corpus).

    Raises:
        ValueError: no tokenizer anywhere.
    """
    if tokenizer is None:
        raise ValueError(
            f"{owner}: model is a config dict and no tokenizer is known. Pass tokenizer=<dir or hub id>, or use a "
            "datamodule with a `tokenizer` attribute (TextCorpusDataModule(train_tokenizer=...))."
        )
    overrides: dict[str, Any] = {}
    if isinstance(spec, dict):
        # From scratch: the embedding table follows the tokenizer (e.g. one trained on the corpus).
        overrides = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    return build_model(auto_class, spec, gradient_checkpointing=gradient_checkpointing, compile=compile, **overrides)


def tokenizer_files(tokenizer: PreTrainedTokenizerBase) -> dict[str, str]:
    """The files ``save_pretrained`` writes for ``tokenizer``, as text (plain data: a checkpoint holding them still
    loads with ``weights_only=True``). Empty when a file is not text (e.g. a SentencePiece model)."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        try:
            return {p.name: p.read_text(encoding="utf-8") for p in sorted(Path(tmp).iterdir()) if p.is_file()}
        except UnicodeDecodeError:
            return {}


def tokenizer_from_files(files: Any, source: str) -> PreTrainedTokenizerBase:
    """The tokenizer :func:`tokenizer_files` stored, loaded as any tokenizer directory is (remote code refused).

    Raises:
        ValueError: ``files`` is not a mapping of plain file names to text.
    """
    if not isinstance(files, dict) or not files or not all(
        isinstance(name, str) and _SAFE_FILE_NAME.fullmatch(name) and isinstance(text, str)
        for name, text in files.items()
    ):
        raise ValueError(
            f"{source}: checkpoint[{TOKENIZER_STATE_KEY!r}] is not the tokenizer files lit-llm stores (plain file "
            "names mapped to text); the checkpoint is damaged or was not written by lit-llm."
        )
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in files.items():
            (Path(tmp) / name).write_text(text, encoding="utf-8")
        return load_tokenizer(tmp)  # loads every file into memory: the directory may go


def store_datamodule_tokenizer(module: Any, checkpoint: dict[str, Any]) -> None:
    """Put the tokenizer a language module's model was sized to into ``checkpoint`` when it came from the
    datamodule (no ``tokenizer`` argument names it), so the checkpoint alone rebuilds the module."""
    if module.tokenizer_name is not None or module.tokenizer is None:
        return
    if getattr(module, "_tokenizer_files", None) is None:  # the tokenizer does not change during a run
        module._tokenizer_files = tokenizer_files(module.tokenizer)
    if module._tokenizer_files:
        checkpoint[TOKENIZER_STATE_KEY] = module._tokenizer_files


def restore_datamodule_tokenizer(module: Any, checkpoint: dict[str, Any]) -> None:
    """Build a language module's model from the tokenizer :func:`store_datamodule_tokenizer` kept, when no
    datamodule built it first (``lit-llm export``, ``load_from_checkpoint``); a resumed fit has built it already."""
    if module.model is None and TOKENIZER_STATE_KEY in checkpoint:
        module._build(tokenizer_from_files(checkpoint[TOKENIZER_STATE_KEY], type(module).__name__))


def check_block_size(model: torch.nn.Module, spec: ModelSpec, block_size: int | None) -> None:
    """Refuse a datamodule whose examples are longer than the model's position embeddings."""
    limit = max_positions(getattr(model, "config", None))
    if block_size is not None and limit is not None and block_size > limit:
        raise ValueError(
            f"the datamodule's block_size={block_size} is larger than the model's maximum positions ({limit}, "
            f"config of {spec if isinstance(spec, str) else 'the config dict'}): set block_size <= {limit}."
        )


def log_train_step(module: pl.LightningModule, loss_sum: torch.Tensor, count: torch.Tensor, correct: torch.Tensor,
                   batch_size: int) -> None:
    """``train/loss``, ``train/perplexity`` and ``train/accuracy`` of one micro-batch (token means)."""
    mean = loss_sum.detach() / count.clamp(min=1)
    module.log("train/loss", mean, on_step=True, prog_bar=True, batch_size=batch_size)
    module.log("train/perplexity", torch.exp(mean), on_step=True, batch_size=batch_size)
    module.log("train/accuracy", correct / count.clamp(min=1), on_step=True, batch_size=batch_size)


def exact_step_loss(normalizer: StepTokenNormalizer | None, loss_sum: torch.Tensor, count: torch.Tensor,
                    extra: torch.Tensor | None) -> torch.Tensor:
    """The loss to backward for one micro-batch.

    With a ``normalizer`` (exact token loss) it is the *sum* over target tokens, which :func:`normalize_step`
    divides by the optimizer step's token count across accumulation and ranks; without, the micro-batch mean.
    ``extra`` is a per-example mean (the sentence-pair loss), weighted so its step weights sum to 1.
    """
    if normalizer is None:
        return loss_sum / count.clamp(min=1) + (extra if extra is not None else 0.0)
    normalizer.add(count)
    if extra is not None:
        # Micro-batch means averaged with weights count / N_step, which sum to 1 over the step.
        loss_sum = loss_sum + extra * count
    return loss_sum


def normalize_step(module: pl.LightningModule, normalizer: StepTokenNormalizer) -> None:
    """In ``on_before_optimizer_step``: divide the step's gradients by its target-token count (all ranks)."""
    if normalizer.pending is None:
        return
    strategy = module.trainer.strategy
    n_step = normalizer.scale(
        module.parameters(),
        accumulate=module.trainer.accumulate_grad_batches,
        world_size=module.trainer.world_size,
        all_reduce_sum=lambda t: strategy.reduce(t, reduce_op="sum"),
    )
    module.log("train/targets_per_step", n_step.float(), on_step=True, rank_zero_only=True)


class TokenStats(Metric):
    """Token-weighted loss, perplexity and accuracy over an evaluation epoch, summed over ranks by torchmetrics.

    Example::
        stats = TokenStats()
        stats.update(loss_sum, count, correct)   # per batch
        stats.compute()                           # {"loss": ..., "perplexity": ..., "accuracy": ...}
    """

    loss_sum: torch.Tensor
    targets: torch.Tensor
    correct: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        for name in ("loss_sum", "targets", "correct"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, loss_sum: torch.Tensor, count: torch.Tensor, correct: torch.Tensor) -> None:
        self.loss_sum += loss_sum.detach().double()
        self.targets += count.double()
        self.correct += correct.double()

    def compute(self) -> dict[str, torch.Tensor]:
        mean = (self.loss_sum / self.targets.clamp(min=1)).float()
        return {"loss": mean, "perplexity": torch.exp(mean),
                "accuracy": (self.correct / self.targets.clamp(min=1)).float()}


def finish_eval_epoch(module: pl.LightningModule, stats: TokenStats, stage: str, report_dir: str | None = None,
                      ) -> Path | None:
    """Log ``<stage>/loss``, ``/perplexity``, ``/accuracy`` of the epoch and reset; after a test epoch, also write
    the report (rank zero) and return its path."""
    values = stats.compute()
    module.log_dict({f"{stage}/{k}": v for k, v in values.items()}, prog_bar=stage == "val")
    stats.reset()
    if stage != "test" or not module.trainer.is_global_zero:
        return None
    return save_lm_report(values, report_path(module, report_dir), type(module).__name__)


def save_lm_report(values: dict[str, torch.Tensor], out: Path, owner: str) -> Path:
    """Write ``lm_report.json`` (test loss, perplexity, accuracy) under ``out`` and print it."""
    report = {"module": owner, **{k: float(v) for k, v in values.items()}}
    path = out / "lm_report.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    rank_zero_info(f"\nLanguage-model report (test): loss {report['loss']:.4f}, perplexity {report['perplexity']:.2f}, "
                   f"accuracy {report['accuracy']:.4f} ({path})")
    return path
