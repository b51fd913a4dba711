"""``lit-llm export CHECKPOINT OUT_DIR``: a Lightning checkpoint (plain file or sharded directory) to an HF model.

The checkpoint's hyper-parameters rebuild the lit-llm module (the first of our module classes whose structure
loads the weights strictly, or the one named by ``--module``); its HF model and tokenizer are then saved with
``save_pretrained``, label maps included, so ``from_pretrained`` and ``pipeline`` load the result.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

import torch

from lit_llm.checkpointing import CheckpointError, load_checkpoint_file, require_lightning_checkpoint

__all__ = ["load_checkpoint", "export_checkpoint", "main", "CheckpointError"]

MODULE_CLASSES = (
    "lit_llm.modules.SequenceClassifier",
    "lit_llm.modules.TokenClassifier",
    "lit_llm.modules.MaskedLanguageModel",
    "lit_llm.modules.CausalLanguageModel",
)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint safely (``weights_only=True``): a ``.ckpt`` file or a sharded directory.

    Raises:
        FileNotFoundError: nothing at ``path``.
        CheckpointError: a truncated or corrupt file, or one that is not a Lightning checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        if not (path / ".metadata").is_file():
            raise CheckpointError(
                f"{path} is a directory but not a distributed checkpoint (no .metadata file); "
                "give a .ckpt file or the checkpoint directory written by TransformerFSDP / TransformerFSDP2."
            )
        from lightning.fabric.utilities.load import _load_distributed_checkpoint

        checkpoint = _load_distributed_checkpoint(path)
        if "model" in checkpoint and "state_dict" not in checkpoint:
            checkpoint["state_dict"] = checkpoint.pop("model")
    else:
        checkpoint = load_checkpoint_file(path)
    return require_lightning_checkpoint(checkpoint, path)


def _import(class_path: str) -> type:
    module_name, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module_name), name)


def rebuild_module(checkpoint: dict[str, Any], module_class: str | None = None) -> torch.nn.Module:
    """Rebuild the LightningModule from the checkpoint's hyper-parameters and load its weights strictly.

    Raises:
        CheckpointError: no candidate class matches the checkpoint.
    """
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    state = checkpoint["state_dict"]
    candidates = [module_class] if module_class else list(MODULE_CLASSES)
    errors = []
    for class_path in candidates:
        try:
            cls = _import(class_path)
        except (ImportError, AttributeError) as err:
            errors.append(f"{class_path}: {err}")
            continue
        try:
            module = cls(**hparams)
            if getattr(module, "model", None) is None and hasattr(module, "configure_model"):
                module.configure_model()
            module.load_state_dict(state, strict=True)
            return module
        except Exception as err:  # try the next class; report all at the end
            errors.append(f"{class_path}: {str(err).splitlines()[0][:160]}")
    raise CheckpointError(
        "no lit-llm module matches this checkpoint; pass --module package.Class. Tried:\n  " + "\n  ".join(errors)
    )


def export_checkpoint(
    checkpoint_path: str | Path, out_dir: str | Path, module_class: str | None = None, onnx: bool = False
) -> Path:
    """Consolidate ``checkpoint_path`` into an HF model directory ``out_dir`` (new or empty).

    Example::
        export_checkpoint("runs/rt/version_0/checkpoints/best.ckpt", "exports/rt")
    """
    from lit_llm.hf import check_export_dir, export_pretrained

    check_export_dir(out_dir)
    module = rebuild_module(load_checkpoint(checkpoint_path), module_class)
    hf_model = getattr(module, "model", None)
    if hf_model is None or not hasattr(hf_model, "save_pretrained"):
        raise CheckpointError(f"{type(module).__name__} holds no HF model in `.model` to export")
    tokenizer = None
    try:
        tokenizer = module.tokenizer  # type: ignore[attr-defined]
    except (AttributeError, ValueError, OSError):
        pass
    out = export_pretrained(hf_model, tokenizer, out_dir)
    if onnx:
        export_onnx(hf_model, out / "model.onnx")
    return out


def export_onnx(model: torch.nn.Module, path: Path, seq_len: int = 16) -> Path:
    """Export the model's forward (input_ids, attention_mask) -> logits to ONNX with dynamic batch and length.

    Raises:
        ImportError: the ``onnx`` package is missing (install hint).
    """
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ImportError("ONNX export needs the onnx package: pip install onnx") from None
    model = model.eval()
    ids = torch.ones(2, seq_len, dtype=torch.long)
    mask = torch.ones(2, seq_len, dtype=torch.long)

    class _Logits(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits

    axes = {0: "batch", 1: "sequence"}
    torch.onnx.export(
        _Logits(model),
        (ids, mask),
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["logits"],
        dynamic_axes={"input_ids": axes, "attention_mask": axes, "logits": axes},
        dynamo=False,
    )
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lit-llm export", description=__doc__)
    parser.add_argument("checkpoint", help="a .ckpt file or a sharded checkpoint directory")
    parser.add_argument("out_dir", help="new or empty directory for the HF model")
    parser.add_argument("--module", default=None, help="LightningModule class path (default: try lit-llm's)")
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
