"""``lit-llm export CHECKPOINT OUT_DIR``: a Lightning checkpoint (plain file or sharded directory) to an HF model.

The module is rebuilt as Lightning's ``load_from_checkpoint`` does: its class is ``--module`` or the ``_class_path``
that ``lit-llm fit`` (LightningCLI) stores in the checkpoint's hyper-parameters, it is instantiated from those
hyper-parameters, and the weights are loaded strictly. The checkpoint itself is read by
:func:`lit_llm.training.checkpointing.load_checkpoint_file` (``weights_only=True``). The module's HF model and tokenizer
are then saved with ``save_pretrained``, label maps included, so ``from_pretrained`` and ``pipeline`` load the result;
``--onnx`` adds ``model.onnx`` with every text input the model takes (``token_type_ids`` too for BERT-like models).

A checkpoint written with the :class:`~lit_llm.callbacks.LoRA` callback holds only the adapters (and head): the
base model is rebuilt from the hyper-parameters, checked against the base fingerprint in the callback's state,
adapted as the callback did, given the adapters, and exported merged (a plain HF model). A language model
pre-trained from a config dict is sized to the tokenizer its datamodule trained: its checkpoints carry that
tokenizer's files (text), from which the model is rebuilt and which the export saves.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from transformers import PreTrainedTokenizerBase

from lit_llm.training.checkpointing import CheckpointError, load_checkpoint_file, require_lightning_checkpoint
from lit_llm.errors import InvalidArgumentError
from lit_llm.training.lora import (
    LoraSpec,
    QuantizationUnavailableError,
    apply_lora,
    base_fingerprint,
    lora_state_of,
    merge_lora,
    trainable_parameter_names,
)

__all__ = ["load_checkpoint", "rebuild_module", "export_checkpoint", "export_onnx", "main", "CheckpointError"]

_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")
# The instantiator LightningCLI records in `_instantiator`; Lightning's own allowlist holds the same name.
_CLI_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"
ONNX_TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint safely (``weights_only=True``): a ``.ckpt`` file or a sharded directory.

    Raises:
        FileNotFoundError: nothing at ``path``.
        CheckpointError: a truncated or corrupt file, or one that is not a Lightning checkpoint.
    """
    return require_lightning_checkpoint(load_checkpoint_file(path), path)


def _module_class(class_path: Any, where: str) -> type[pl.LightningModule]:
    """The LightningModule subclass ``class_path`` names; imported only once it is known to be a dotted name."""
    if not isinstance(class_path, str) or not _DOTTED.fullmatch(class_path):
        raise CheckpointError(f"{where} {class_path!r} is not a class path such as lit_llm.modules.SequenceClassifier")
    module_name, _, name = class_path.rpartition(".")
    if module_name.split(".")[0] in sys.stdlib_module_names:  # no LightningModule lives there; never import it
        raise CheckpointError(f"{where} {class_path!r} is not a LightningModule subclass")
    try:
        cls = getattr(importlib.import_module(module_name), name, None)
    except ImportError as err:
        raise CheckpointError(
            f"{where} {class_path!r} cannot be imported ({err}); install its package or put it on PYTHONPATH"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, pl.LightningModule)):
        raise CheckpointError(f"{where} {class_path!r} is not a LightningModule subclass")
    return cls


def _instantiate(cls: type[pl.LightningModule], hparams: Mapping[str, Any], checkpoint: Mapping[str, Any]) -> Any:
    """``cls`` built from the saved hyper-parameters, with the argument filtering of Lightning's ``_load_state``."""
    kwargs = {k: v for k, v in hparams.items() if k not in ("_class_path", "_instantiator")}
    signature = inspect.signature(cls.__init__)
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    names = [n for n, p in signature.parameters.items() if n != "self" and p.kind not in variadic]
    hparams_name = checkpoint.get("hparams_name")
    if hparams_name and hparams_name in names:  # the module saved one dict/Namespace argument whole
        kwargs = {hparams_name: kwargs}
    if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in names}
    if hparams.get("_instantiator") == _CLI_INSTANTIATOR:
        # Written by LightningCLI: rebuild through the same jsonargparse parser, as load_from_checkpoint does, so
        # nested class_path arguments are instantiated and types checked exactly as at `lit-llm fit`.
        from lightning.pytorch.cli import instantiate_module

        return instantiate_module(cls, kwargs)
    return cls(**kwargs)


def rebuild_module(
    checkpoint: Mapping[str, Any], module_class: str | None = None, source: str | Path = "the checkpoint"
) -> pl.LightningModule:
    """Rebuild the LightningModule a checkpoint was written by, with ``load_from_checkpoint`` semantics.

    Args:
        checkpoint: a Lightning checkpoint dict (from :func:`load_checkpoint`).
        module_class: the class path to build (``--module``); default: the ``_class_path`` that LightningCLI
            stores in the hyper-parameters. When both are known they must agree.
        source: the checkpoint's path, for the messages.

    Raises:
        CheckpointError: the class is unknown, not importable, not a LightningModule, not the checkpoint's class, or
            it cannot be built from the hyper-parameters or does not take the weights strictly.

    Example::
        module = rebuild_module(load_checkpoint("runs/rt/version_0/checkpoints/last.ckpt"))
    """
    hparams = checkpoint.get("hyper_parameters") or {}
    if not isinstance(hparams, Mapping):
        hparams = vars(hparams) if hasattr(hparams, "__dict__") else {}
    saved = hparams.get("_class_path")
    if module_class is not None:
        cls = _module_class(module_class, "--module")
        if saved is not None and saved != module_class:
            saved_cls = _module_class(saved, f"{source}: hyper_parameters['_class_path']")
            if not issubclass(saved_cls, cls):
                raise CheckpointError(
                    f"{source} holds a {saved} (its hyper_parameters['_class_path']), not a {module_class} "
                    f"(--module). Drop --module to export it as {saved}, or give a checkpoint of a {module_class} run."
                )
            cls = saved_cls  # a subclass of --module: build what was trained
    elif saved is not None:
        cls = _module_class(saved, f"{source}: hyper_parameters['_class_path']")
    else:
        raise CheckpointError(
            f"{source} does not say which LightningModule wrote it (no hyper_parameters['_class_path'], which "
            "`lit-llm fit` records); pass --module package.Class, e.g. --module lit_llm.modules.SequenceClassifier"
        )
    try:
        module = _instantiate(cls, hparams, checkpoint)
    except Exception as err:  # noqa: BLE001 - any failure of the user's __init__ is reported with its class
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{source}: {cls.__module__}.{cls.__qualname__} cannot be built from the checkpoint's hyper-parameters "
            f"({type(err).__name__}: {first})"
        ) from err
    from lightning.pytorch.utilities.model_helpers import is_overridden

    if is_overridden("configure_model", module):
        module.configure_model()
    try:
        module.on_load_checkpoint(dict(checkpoint))
    except (ValueError, OSError) as err:  # e.g. the tokenizer a language model keeps in its checkpoints
        raise CheckpointError(f"{source}: {str(err).strip().splitlines()[0][:300]}") from None
    lora = lora_state_of(dict(checkpoint))
    trainable = _apply_checkpoint_lora(module, lora, source) if lora is not None else None
    try:
        result = module.load_state_dict(checkpoint["state_dict"], strict=False)
    except RuntimeError as err:  # shapes that differ
        raise CheckpointError(
            f"{source}: the weights do not fit {cls.__qualname__} built from its hyper-parameters "
            f"({str(err).strip().splitlines()[-1].strip()[:200]})"
        ) from None
    missing = result.missing_keys
    if trainable is not None:  # a LoRA checkpoint holds only the trainable weights: the frozen base is rebuilt
        missing = [k for k in missing if k in trainable]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{source}: the weights do not fit {cls.__qualname__} built from its hyper-parameters (missing "
            f"{missing[:5]}, unexpected {result.unexpected_keys[:5]}); is it the checkpoint of another "
            "module class?"
        )
    if lora is not None:  # the export is the merged model, which from_pretrained and pipeline() load
        attr = lora["model_attr"]
        setattr(module, attr, merge_lora(getattr(module, attr)))
    return module.eval()


def _apply_checkpoint_lora(module: pl.LightningModule, lora: Mapping[str, Any], source: str | Path) -> set[str]:
    """Adapt the rebuilt module's model as the LoRA callback did (from its checkpoint state); returns the names of
    the weights the checkpoint must hold (adapters and head)."""
    attr = lora.get("model_attr")
    model = getattr(module, attr, None) if isinstance(attr, str) else None
    if not isinstance(model, torch.nn.Module) or not isinstance(lora.get("spec"), Mapping):
        raise CheckpointError(
            f"{source} was written with the LoRA callback, but its state names no model to adapt (model_attr "
            f"{attr!r} of {type(module).__name__}); is the checkpoint complete?"
        )
    try:
        spec = LoraSpec.from_dict(dict(lora["spec"]))
        fingerprint = base_fingerprint(model, spec)
        saved = lora.get("base_fingerprint")
        if saved and not all(abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b)) for a, b in zip(saved, fingerprint)):
            raise CheckpointError(
                f"{source} holds LoRA adapters trained on another base model than {type(module).__name__} rebuilds "
                f"from its hyper-parameters (weight sums {fingerprint} vs {saved}): the base must be the same "
                "pretrained model directory. A layer that directory lacks (e.g. a pooler) or a model built from a "
                "config is initialized at random: train such layers with the adapters (LoRA head: [classifier, "
                "bert.pooler]) so the checkpoint holds them."
            )
        apply_lora(model, spec)
    except (KeyError, TypeError, InvalidArgumentError, QuantizationUnavailableError) as err:
        raise CheckpointError(f"{source}: its LoRA adapters cannot be re-applied ({err})") from None
    return trainable_parameter_names(model, prefix=f"{attr}.")


def export_checkpoint(
    checkpoint_path: str | Path, out_dir: str | Path, module_class: str | None = None, onnx: bool = False
) -> Path:
    """Consolidate ``checkpoint_path`` into an HF model directory ``out_dir`` (new or empty).

    Args:
        checkpoint_path: a ``.ckpt`` file or a sharded checkpoint directory (TransformerFSDP / TransformerFSDP2).
        out_dir: a new or empty directory.
        module_class: the LightningModule class path, for checkpoints not written by ``lit-llm fit``.
        onnx: also write ``out_dir/model.onnx`` (:func:`export_onnx`).

    Raises:
        FileNotFoundError, FileExistsError, CheckpointError: see :func:`load_checkpoint`, :func:`rebuild_module`.

    Example::
        export_checkpoint("runs/rt/version_0/checkpoints/best.ckpt", "exports/rt")
    """
    from lit_llm.hf import check_export_dir, export_pretrained

    check_export_dir(out_dir)
    module = rebuild_module(load_checkpoint(checkpoint_path), module_class, checkpoint_path)
    hf_model = getattr(module, "model", None)
    if hf_model is None or not hasattr(hf_model, "save_pretrained"):
        raise CheckpointError(
            f"{type(module).__name__} holds no Hugging Face model in `.model` to export; export its weights yourself"
        )
    tokenizer: PreTrainedTokenizerBase | None = None
    try:
        found = module.tokenizer
        tokenizer = found if isinstance(found, PreTrainedTokenizerBase) else None
    except (AttributeError, ValueError, OSError):  # a module without one, or one that cannot load it
        pass
    out = export_pretrained(hf_model, tokenizer, out_dir)
    if onnx:
        export_onnx(hf_model, out / "model.onnx")
    return out


def onnx_input_names(model: torch.nn.Module) -> list[str]:
    """The text inputs ``model.forward`` takes, among ``input_ids``, ``attention_mask``, ``token_type_ids``.

    ``token_type_ids`` counts only where the model embeds segments (``config.type_vocab_size >= 2``: BERT, not
    GPT-2 or RoBERTa, whose forward accepts the argument without a segment embedding of its own).
    """
    accepted = inspect.signature(model.forward).parameters
    names = [name for name in ONNX_TEXT_INPUTS if name in accepted]
    if "token_type_ids" in names and getattr(getattr(model, "config", None), "type_vocab_size", 0) < 2:
        names.remove("token_type_ids")
    return names


class _Logits(torch.nn.Module):
    """``model(**inputs).logits`` with the inputs as positional tensors, for the ONNX tracer."""

    def __init__(self, inner: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.inner = inner
        self.names = names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.inner(**dict(zip(self.names, inputs, strict=True))).logits


def export_onnx(model: torch.nn.Module, path: str | Path, seq_len: int = 16) -> Path:
    """Export the model's ``forward(input_ids, attention_mask[, token_type_ids]) -> logits`` to ONNX.

    Every text input the model takes is an ONNX input (:func:`onnx_input_names`), each with dynamic batch and
    sequence axes; feed them by name: ``{i.name: enc[i.name] for i in session.get_inputs()}``.

    Raises:
        ImportError: the ``onnx`` package is missing (install hint).

    Example::
        export_onnx(AutoModelForSequenceClassification.from_pretrained("exports/rt"), "exports/rt/model.onnx")
    """
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ImportError("ONNX export needs the onnx package: pip install onnx") from None
    was_training = model.training
    model.eval()
    names = onnx_input_names(model)
    dummy = {
        "input_ids": torch.ones(2, seq_len, dtype=torch.long),
        "attention_mask": torch.ones(2, seq_len, dtype=torch.long),
        # Both segments present, as in a text pair.
        "token_type_ids": (torch.arange(seq_len) >= seq_len // 2).long().expand(2, seq_len).contiguous(),
    }
    inputs = tuple(dummy[name] for name in names)
    # In eval mode: the exporter restores the wrapper's mode onto the model afterwards, and a new Module trains.
    wrapper = _Logits(model, names).eval()
    with torch.no_grad():
        logits = wrapper(*inputs)
    axes = {0: "batch", 1: "sequence"}
    dynamic_axes: dict[str, dict[int, str]] = {name: axes for name in names}
    # (B, num_labels) for a classifier, (B, T, V) for token-level heads.
    dynamic_axes["logits"] = axes if logits.dim() == 3 else {0: "batch"}
    torch.onnx.export(
        wrapper,
        inputs,
        str(path),
        input_names=names,
        output_names=["logits"],
        dynamic_axes=dynamic_axes,
        dynamo=False,
    )
    model.train(was_training)  # the caller's model comes back in the mode it was given in
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    """``lit-llm export CHECKPOINT OUT_DIR [--module package.Class] [--onnx]``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="lit-llm export", description=__doc__)
    parser.add_argument("checkpoint", help="a .ckpt file or a sharded checkpoint directory")
    parser.add_argument("out_dir", help="new or empty directory for the HF model")
    parser.add_argument(
        "--module",
        default=None,
        help="LightningModule class path (default: the _class_path that `lit-llm fit` stores in the checkpoint)",
    )
    parser.add_argument("--onnx", action="store_true", help="also write model.onnx")
    args = parser.parse_args(argv)
    try:
        out = export_checkpoint(args.checkpoint, args.out_dir, args.module, args.onnx)
    except (FileNotFoundError, FileExistsError, CheckpointError, ImportError) as err:
        print(f"lit-llm export: {err}", file=sys.stderr)
        return 2
    print(f"exported HF model to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
