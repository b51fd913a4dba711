"""Checkpoint files that are never left half-written, loaded without unpickling code.

Lightning's ``TorchCheckpointIO`` writes the checkpoint in place: a process killed during the write leaves a
truncated file where the last good checkpoint was (when ``save_top_k=1`` or ``save_last`` overwrite it). This
plugin writes to a temporary file in the same directory, flushes it to disk and renames it over the target;
a rename within one filesystem is atomic, so the target is always either the old or the new checkpoint.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override

from lit_llm.errors import UserInputError

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointError",
    "atomic_torch_save",
    "load_checkpoint_file",
    "require_lightning_checkpoint",
]


class CheckpointError(ValueError, UserInputError):
    """A checkpoint that cannot be used; the message says which file and why."""


def _first_line(err: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()  # torch's messages carry ANSI bold codes
    return text.splitlines()[0][:160].rstrip(" ,:") if text else type(err).__name__


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu", weights_only: bool = True) -> Any:
    """``torch.load`` with errors that name the file and say what to do; never unpickles code by default.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: a truncated or corrupt file, or one that holds Python objects (needs unsafe globals).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as err:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:  # noqa: BLE001 - not a zip checkpoint: report the loader's own reason below
            unsafe = []
        if unsafe:
            raise CheckpointError(
                f"{path} is not a readable checkpoint (it needs the unsafe globals {unsafe}: Python objects, not "
                "only tensors). lit-llm loads with weights_only=True and never unpickles code; save the weights "
                "alone (a Lightning .ckpt, torch.save(model.state_dict()) or save_pretrained)."
            ) from None
        reason = _first_line(err)
    except (EOFError, RuntimeError, ValueError, OSError) as err:
        reason = _first_line(err)
    raise CheckpointError(
        f"{path} is not a readable checkpoint ({reason}). It may be truncated (a kill during save) or not a "
        "PyTorch file; use an earlier checkpoint. lit-llm loads with weights_only=True and never unpickles code."
    )


def require_lightning_checkpoint(checkpoint: Any, path: str | Path) -> dict[str, Any]:
    """``checkpoint`` if it is a Lightning checkpoint (a dict with ``state_dict``).

    Raises:
        CheckpointError: anything else, naming the file and what it holds.
    """
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        found = list(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            f"{path} is not a Lightning checkpoint: no 'state_dict' (found {found}). Give a .ckpt written by a "
            "Lightning Trainer (runs/<name>/version_<n>/checkpoints/), or load plain weights into the model yourself."
        )
    return checkpoint


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` through a temporary file and an atomic rename.

    Example::
        atomic_torch_save({"state_dict": model.state_dict()}, "runs/x/last.ckpt")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic writes and ``weights_only=True`` loads.

    The ``lit-llm`` CLI installs it on every single-file strategy; in your own project pass it as a plugin.

    Example::
        Trainer(plugins=[AtomicCheckpointIO()])
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO: storage_options={storage_options!r} is not supported")
        atomic_torch_save(checkpoint, path)

    @override
    def load_checkpoint(
        self, path: _PATH, map_location: Any = lambda storage, loc: storage, weights_only: bool | None = None
    ) -> dict[str, Any]:
        safe = True if weights_only is None else weights_only
        checkpoint = load_checkpoint_file(path, map_location=map_location, weights_only=safe)
        return require_lightning_checkpoint(checkpoint, path)
