"""Every use of a private Lightning / torch / transformers name, in one place, each with why and where checked.

A private name can change in any release. Keeping them here means one file to read when a dependency is
upgraded, and the test suite turns those libraries' deprecation warnings into errors, so a change is heard
before it breaks a user's run. Each entry says what it is for and the versions it was checked on.
"""

from __future__ import annotations

import atexit
from typing import Any

import torch

__all__ = [
    "destroy_process_group_at_exit",
    "load_distributed_checkpoint",
    "materialize_distributed_module",
    "optimizers_to_device",
]


def _destroy_process_group() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def destroy_process_group_at_exit() -> None:
    """Destroy the default process group at interpreter exit, whatever its backend (idempotent).

    Why: Lightning (2.6.6) registers this only for NCCL (``lightning.fabric.utilities.distributed
    ._init_dist_connection``). A gloo group left alive at exit (every CPU ``ddp`` / ``ddp_spawn`` worker) keeps
    gloo's C++ threads and their pending work, holding tensors with Python references, alive into interpreter
    finalization, where destroying them can abort the process with SIGABRT ("terminate called without an active
    exception"); see pytorch/pytorch PR #179291 (an atexit handler in ``init_process_group``, not merged) and
    ``scripts/repro_gloo_exit_abort.py``. ``atexit`` runs while the interpreter is still whole. A no-op in a
    process without a process group, and when the group was already destroyed. Checked on torch 2.13.0.
    """
    global _registered
    if not _registered:
        atexit.register(_destroy_process_group)
        _registered = True


_registered = False


def load_distributed_checkpoint(path: Any) -> dict[str, Any]:
    """A ``torch.distributed.checkpoint`` directory as one full state dict, on CPU, in one process.

    Private: ``lightning.fabric.utilities.load._load_distributed_checkpoint`` (checked on lightning 2.6.6); torch's
    public ``dcp.load`` needs a state dict of the right shapes up front, which ``lit-llm export`` does not have.
    """
    from lightning.fabric.utilities.load import _load_distributed_checkpoint

    return _load_distributed_checkpoint(path)


def materialize_distributed_module(module: torch.nn.Module, device: torch.device) -> None:
    """Move a meta-device or sharded module's parameters to ``device`` and run its ``reset_parameters``.

    Private: ``lightning.fabric.strategies.model_parallel._materialize_distributed_module`` (lightning 2.6.6), the
    step ``ModelParallelStrategy.setup`` runs after ``configure_model``; ``TransformerFSDP2`` shards HF models
    itself and must run the same step.
    """
    from lightning.fabric.strategies.model_parallel import _materialize_distributed_module

    _materialize_distributed_module(module, device)


def optimizers_to_device(optimizers: Any, device: torch.device) -> None:
    """Move optimizer states to ``device``, as Lightning's strategies do after loading a checkpoint.

    Private: ``lightning.fabric.utilities.optimizer._optimizers_to_device`` (lightning 2.6.6).
    """
    from lightning.fabric.utilities.optimizer import _optimizers_to_device

    _optimizers_to_device(optimizers, device)
