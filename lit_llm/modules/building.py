"""What every lit-llm module does the same way, as functions (no shared base class): check the common options,
build the HF model, load the tokenizer, refuse an export directory that would be overwritten.

Every module takes the same options with the same meaning: ``optimizer``, ``lr_scheduler``, ``layer_decay``,
``gradient_checkpointing``, ``compile``, ``export_dir``, ``export`` and ``report_dir``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_llm.hf import ModelSpec, check_export_dir, load_model, load_tokenizer
from lit_llm.modules.best_checkpoint import output_dir
from lit_llm.training.dropout import use_fast_dropout

__all__ = ["build_model", "check_export_target", "check_layer_decay", "load_module_tokenizer", "report_path"]


def check_layer_decay(owner: str, layer_decay: float | None) -> None:
    """Refuse a layer-wise LR decay factor outside (0, 1].

    Raises:
        ValueError: naming the module and the value.
    """
    if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"{owner}(layer_decay={layer_decay!r}): must be in (0, 1], e.g. 0.8.")


def build_model(
    auto_class: Any, spec: ModelSpec, *, gradient_checkpointing: bool, compile: bool, **overrides: Any
) -> PreTrainedModel:
    """Load (or build from a config dict) an HF model in training mode, with the module's memory and speed options.

    Its ``nn.Dropout`` layers draw their masks with :func:`lit_llm.training.dropout.fast_dropout` on CPU (the same
    dropout drawn several times faster; torch's kernel elsewhere), attention-probability dropout included.

    Args:
        auto_class: e.g. ``AutoModelForSequenceClassification``.
        spec: a directory, a hub id or a config dict with ``model_type``.
        gradient_checkpointing: recompute block activations in the backward pass.
        compile: ``torch.compile`` the model in place.
        overrides: config attributes (``num_labels``, ``id2label``, ``vocab_size``, ...).
    """
    model = load_model(auto_class, spec, **overrides)
    # from_pretrained returns eval mode and Lightning keeps submodules' modes: without this dropout stays off.
    model.train()
    use_fast_dropout(model)
    if gradient_checkpointing:
        # transformers >= 5.2x renamed gradient_checkpointing_enable; support both.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if compile:
        model.compile()
    return model


def load_module_tokenizer(owner: str, name: str | None) -> PreTrainedTokenizerBase:
    """The tokenizer a module was given (a directory or hub id).

    Raises:
        ValueError: the module has no tokenizer name (its model is a config dict and no ``tokenizer`` was given).
    """
    if name is None:
        raise ValueError(f"{owner}: the model is a config dict, so pass tokenizer=<dir or hub id>.")
    return load_tokenizer(name)


def check_export_target(module: pl.LightningModule, stage: str, export_dir: str | None, export: bool) -> None:
    """At fit setup: refuse an export directory that already holds files, before any training time is spent."""
    if stage == "fit" and export:
        check_export_dir(output_dir(module, export_dir, "export"))


def report_path(module: pl.LightningModule, report_dir: str | None) -> Path:
    """Where a module writes its test reports: ``report_dir``, else ``<run dir>/reports`` (created)."""
    out = output_dir(module, report_dir, "reports")
    out.mkdir(parents=True, exist_ok=True)
    return out
