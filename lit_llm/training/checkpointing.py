"""The one loader of every checkpoint a user hands lit-llm, and checkpoint files that are never left half-written.

:func:`load_checkpoint_file` serves the resume (:class:`AtomicCheckpointIO`), ``lit-llm export``, the distillation
teacher and the best-checkpoint reload at fit end. It loads with ``weights_only=True``: tensors, plain Python data
and the few exact classes of :data:`ALLOWED_GLOBALS`, never code. It reads a ``.ckpt`` file, a sharded
(``torch.distributed.checkpoint``) directory, or a remote URL through fsspec (``s3://``, ``gs://``, ``memory://``).

Lightning's ``TorchCheckpointIO`` writes the checkpoint in place: a process killed during the write leaves a
truncated file where the last good checkpoint was (when ``save_top_k=1`` or ``save_last`` overwrite it).
:class:`AtomicCheckpointIO` writes a local checkpoint to a temporary file in the same directory, flushes it to disk
and renames it over the target; a rename within one filesystem is atomic, so the target is always either the old or
the new checkpoint. Remote URLs go through Lightning's fsspec writer, which uses the filesystem's transaction.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override

from lit_llm.compat import PathLike
from lit_llm.errors import UserInputError

__all__ = [
    "ALLOWED_GLOBALS",
    "AtomicCheckpointIO",
    "CheckpointError",
    "atomic_torch_save",
    "is_remote",
    "load_checkpoint_file",
    "require_lightning_checkpoint",
]

# The only classes, besides torch's own weights-only set (tensors, dtypes, plain containers), that a checkpoint may
# hold. Exact fully qualified names, one reason each; never a prefix, never a function: the weights-only unpickler
# calls an allowed global with arguments taken from the file, so nothing here may run code, touch files or import.
# Checkpoints written by `lit-llm fit` need none of them (their hyper-parameters are the YAML config's plain data).
ALLOWED_GLOBALS: tuple[str, ...] = (
    "pathlib.PosixPath",  # a Path among a user module's save_hyperparameters() (e.g. `data_dir: Path`); inert.
)

# What no allowed global may come from, whatever a future edit adds (checked by the tests and at first use).
_FORBIDDEN_MODULES = ("builtins", "os", "posix", "nt", "subprocess", "importlib", "sys", "shutil", "runpy", "code")


class CheckpointError(ValueError, UserInputError):
    """A checkpoint that cannot be used; the message says which file and why."""


def is_remote(path: PathLike) -> bool:
    """True for a URL that fsspec opens (``s3://b/k``, ``memory://x``), False for a local path or ``file://``."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def _local(path: PathLike) -> Path:
    text = str(path)
    return Path(urlparse(text).path) if text.startswith("file://") else Path(text)


_allowed_objects: list[Any] | None = None


def _allowed_globals() -> list[Any]:
    """The objects named by :data:`ALLOWED_GLOBALS`, each checked to be exactly the class its name says."""
    global _allowed_objects
    if _allowed_objects is None:
        objects = []
        for name in ALLOWED_GLOBALS:
            module_name, _, attr = name.rpartition(".")
            obj = getattr(importlib.import_module(module_name), attr)
            if (
                not isinstance(obj, type)
                or f"{obj.__module__}.{obj.__qualname__}" != name
                or module_name.split(".")[0] in _FORBIDDEN_MODULES
            ):
                raise RuntimeError(f"ALLOWED_GLOBALS: {name!r} must be the exact name of an inert class")
            objects.append(obj)
        _allowed_objects = objects
    return _allowed_objects


def _torch_load(f: str | Path | IO[bytes], map_location: Any, weights_only: bool) -> Any:
    """``torch.load``; with ``weights_only`` it admits :data:`ALLOWED_GLOBALS` and nothing else."""
    if not weights_only:  # only a caller's explicit choice (Lightning's weights_only=False) gets here
        return torch.load(f, map_location=map_location, weights_only=weights_only)
    with torch.serialization.safe_globals(_allowed_globals()):
        return torch.load(f, map_location=map_location, weights_only=True)


def _reason(err: BaseException) -> str:
    """The first line of a loader's error, without ANSI codes and without torch's advice to load unsafely."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()  # torch's messages carry ANSI bold codes
    line = text.splitlines()[0][:160].rstrip(" ,:.") if text else type(err).__name__
    if "weights_only" in line or "two options" in line:
        return "it holds objects that are not tensors or plain data"
    return line


def _unreadable(name: str, reason: str) -> CheckpointError:
    return CheckpointError(
        f"{name} is not a readable checkpoint ({reason}). It may be truncated (a kill during save) or not a "
        "PyTorch file; use an earlier checkpoint. lit-llm loads with weights_only=True and never unpickles code."
    )


def _load(source: str | io.BytesIO, name: str, map_location: Any, weights_only: bool) -> Any:
    """Load one serialized object (a local file's path or bytes); every failure is a :class:`CheckpointError`."""
    try:
        return _torch_load(source, map_location, weights_only)
    except pickle.UnpicklingError as err:
        try:
            if isinstance(source, io.BytesIO):
                source.seek(0)
            allowed = {f"{o.__module__}.{o.__qualname__}" for o in _allowed_globals()}
            unsafe = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(source)) - allowed)
        except Exception:  # noqa: BLE001 - not a zip checkpoint: report the loader's own reason below
            unsafe = []
        if unsafe:
            raise CheckpointError(
                f"{name} is not a readable checkpoint (it needs the unsafe globals {unsafe}: Python objects, not "
                "only tensors). lit-llm loads with weights_only=True and never unpickles code; save the weights "
                "alone (a Lightning .ckpt, torch.save(model.state_dict()) or save_pretrained)."
            ) from None
        raise _unreadable(name, _reason(err)) from None
    except Exception as err:  # noqa: BLE001 - EOFError, RuntimeError, KeyError (a text file), ...: all unreadable
        raise _unreadable(name, _reason(err)) from None


def _load_sharded(path: Path, map_location: Any) -> dict[str, Any]:
    """A ``torch.distributed.checkpoint`` directory (one shard file per rank) as one full checkpoint dict.

    The non-tensor entries (optimizer hyper-parameters, and Lightning's ``meta.pt`` with the hyper-parameters and
    loop state) go through the same weights-only loading; torch's own planner would unpickle them unrestricted.
    """
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException: what a failed load raises

    from lit_llm.compat import load_distributed_checkpoint

    refusals: list[CheckpointError] = []

    def load_entry(value: io.BytesIO, key: str) -> Any:
        try:
            return _load(value, f"{path} (entry {key!r})", "cpu", True)
        except CheckpointError as err:
            refusals.append(err)  # torch wraps what the planner raises; re-raised below as it is
            raise

    try:
        checkpoint = load_distributed_checkpoint(path, load_entry)
    except (Exception, CheckpointException) as err:  # noqa: BLE001 - a refused entry, a missing or corrupt shard
        if refusals:
            raise refusals[0] from None
        if isinstance(err, CheckpointException):  # the rank's traceback; its last line is the cause
            err = RuntimeError(str(err).strip().splitlines()[-1])
        raise CheckpointError(
            f"{path} is not a readable sharded checkpoint ({_reason(err)}). A shard may be missing or truncated; "
            "use an earlier checkpoint."
        ) from None
    meta = path / "meta.pt"  # Lightning's file of everything but the weights and optimizer states
    if meta.is_file():
        extra = _load(str(meta), str(meta), map_location, True)
        if isinstance(extra, dict):
            checkpoint.update(extra)
    if "model" in checkpoint and "state_dict" not in checkpoint:  # Fabric's key for the weights
        checkpoint["state_dict"] = checkpoint.pop("model")
    return checkpoint


def load_checkpoint_file(path: PathLike, map_location: Any = "cpu", weights_only: bool = True) -> Any:
    """Load a checkpoint without running code from it; errors name the file and say what to do.

    Args:
        path: a ``.ckpt`` / ``.pt`` file, a sharded checkpoint directory (``.metadata`` inside), or a remote URL
            fsspec opens (``s3://bucket/run/last.ckpt``; the filesystem's package must be installed).
        map_location: as for ``torch.load``.
        weights_only: keep True; False (unrestricted unpickling) only where a caller explicitly asks for it, as
            Lightning does for ``trainer.fit(..., weights_only=False)``.

    Returns:
        What the file holds (a Lightning checkpoint is a dict with ``state_dict``).

    Raises:
        FileNotFoundError: nothing at ``path``.
        CheckpointError: a truncated or corrupt file, a directory that is not a sharded checkpoint, or a file that
            holds Python objects other than tensors, plain data and :data:`ALLOWED_GLOBALS`.

    Example::
        checkpoint = load_checkpoint_file("runs/rt/version_0/checkpoints/last.ckpt")
        model.load_state_dict(checkpoint["state_dict"])
    """
    if is_remote(path):
        from lightning.fabric.utilities.cloud_io import get_filesystem

        fs = get_filesystem(path)
        if not fs.exists(str(path)):
            raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
        with fs.open(str(path), "rb") as f:
            data = io.BytesIO(f.read())
        return _load(data, str(path), map_location, weights_only)
    local = _local(path)
    if not local.exists():
        raise FileNotFoundError(f"checkpoint {str(local)!r} does not exist")
    if local.is_dir():
        if not (local / ".metadata").is_file():
            raise CheckpointError(
                f"{local} is a directory but not a distributed checkpoint (no .metadata file); "
                "give a .ckpt file or the checkpoint directory written by TransformerFSDP / TransformerFSDP2."
            )
        return _load_sharded(local, map_location)
    return _load(str(local), str(local), map_location, weights_only)


def require_lightning_checkpoint(checkpoint: Any, path: PathLike) -> dict[str, Any]:
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
    """``torch.save`` to a local ``path`` through a temporary file and an atomic rename.

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
    """``TorchCheckpointIO`` with atomic local writes and loads through :func:`load_checkpoint_file`.

    Local paths (and ``file://``) are written through a temporary file and an atomic rename; remote URLs
    (``s3://...``) go to Lightning's fsspec writer. Every load, local or remote, is weights-only.
    The ``lit-llm`` CLI installs it on every single-file strategy; in your own project pass it as a plugin.

    Example::
        Trainer(plugins=[AtomicCheckpointIO()])
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: PathLike, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO: storage_options={storage_options!r} is not supported")
        if is_remote(path):
            super().save_checkpoint(checkpoint, path)
        else:
            atomic_torch_save(checkpoint, _local(path))

    @override
    def load_checkpoint(
        self, path: PathLike, map_location: Any = lambda storage, loc: storage, weights_only: bool | None = None
    ) -> dict[str, Any]:
        safe = True if weights_only is None else weights_only
        checkpoint = load_checkpoint_file(path, map_location=map_location, weights_only=safe)
        return require_lightning_checkpoint(checkpoint, path)
