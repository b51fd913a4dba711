"""Every use of a private Lightning / torch / transformers name, in one place, each with why and where checked.

A private name can change in any release. Keeping them here means one file to read when a dependency is
upgraded, and the test suite turns those libraries' deprecation warnings into errors, so a change is heard
before it breaks a user's run. Each entry says what it is for and the versions it was checked on.

Private names that cannot live here, because a subclass must override or set them (lightning 2.6.6):
``lit_llm.strategies.fsdp`` overrides ``FSDPStrategy._setup_model`` (to set the activation-checkpointing check
per block, ``_activation_checkpointing_kwargs``) and sets ``ModelParallelStrategy._data_parallel_size`` (FSDP2 over
every process, no tensor parallelism). ``tests/test_compat.py`` fails when one of them disappears.
"""

from __future__ import annotations

import atexit
import io
from collections.abc import Callable
from typing import Any

import torch

# The path type of Lightning's CheckpointIO signatures (str | Path), private in lightning.fabric.utilities.types
# (2.6.6); AtomicCheckpointIO overrides those methods with the same signature.
from lightning.fabric.utilities.types import _PATH as PathLike

__all__ = [
    "PathLike",
    "destroy_process_group_at_exit",
    "hf_attention_implementation",
    "hf_uses_attention_interface",
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


def load_distributed_checkpoint(path: Any, load_bytes: Callable[[io.BytesIO, str], Any]) -> dict[str, Any]:
    """A ``torch.distributed.checkpoint`` directory as one full state dict, on CPU, in one process.

    Each non-tensor entry (optimizer hyper-parameters, ...) is read by ``load_bytes(stream, key)``, lit-llm's
    weights-only loader, instead of torch's planner, whose ``load_bytes`` unpickles it with ``weights_only=False``
    (so does ``lightning.fabric.utilities.load._load_distributed_checkpoint``, which uses that planner).

    Private (checked on torch 2.13.0), as torch's own ``dcp_to_torch_save`` uses them: ``_EmptyStateDictLoadPlanner``
    (rebuilds the state dict from the checkpoint's metadata), ``_traverse.set_element`` (how its ``load_bytes``
    stores nested entries) and ``state_dict_loader._load_state_dict``: the public ``dcp.load`` fills only the keys
    of a state dict given up front, which ``lit-llm export`` does not have.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint._traverse import set_element
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    class _Planner(_EmptyStateDictLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            fqn = read_item.dest_index.fqn
            obj = load_bytes(value, fqn)
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[fqn], obj)
            else:
                self.state_dict[fqn] = obj

    checkpoint: dict[str, Any] = {}
    _load_state_dict(checkpoint, storage_reader=dcp.FileSystemReader(path), planner=_Planner(), no_dist=True)
    return checkpoint


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


def hf_attention_implementation(model: torch.nn.Module) -> str | None:
    """The attention an HF model runs (``"sdpa"``, ``"eager"``, ...): ``config._attn_implementation``, which
    transformers' docs tell users to read (its setter is ``set_attn_implementation``); transformers 5.24."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None)


def hf_uses_attention_interface(model: torch.nn.Module) -> bool:
    """Whether an HF model dispatches attention through ``ALL_ATTENTION_FUNCTIONS``, so that
    ``set_attn_implementation`` changes what runs (``PreTrainedModel._can_set_attn_implementation``, a classmethod
    that reads the model's source; transformers 5.24)."""
    check = getattr(model, "_can_set_attn_implementation", None)
    return bool(check()) if callable(check) else False
