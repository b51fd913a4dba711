"""Checkpoint files that are never left half-written, loaded without unpickling code.

Lightning's ``TorchCheckpointIO`` writes the checkpoint in place: a process killed during the write leaves a
truncated file where the last good checkpoint was (when ``save_top_k=1`` or ``save_last`` overwrite it). This
plugin writes to a temporary file in the same directory, flushes it to disk and renames it over the target;
a rename within one filesystem is atomic, so the target is always either the old or the new checkpoint.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override

__all__ = ["AtomicCheckpointIO", "atomic_torch_save"]


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
        return super().load_checkpoint(path, map_location=map_location, weights_only=safe)
