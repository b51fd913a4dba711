"""What ``lit-llm`` adds to every Trainer it builds, whatever the config says: plain progress lines when stdout is
not a terminal, exact resume, checkpoint files that a kill during a save never truncates, and on CPU an allocator
that keeps large freed blocks.

Example::
    add_plain_progress_bar(cli.config_init["fit"]["trainer"])  # before the Trainer is built
    trainer = Trainer(...)
    add_exact_resume(trainer)
    use_atomic_checkpoint_io(trainer)
"""

from __future__ import annotations

import sys
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_llm.callbacks.progress import PlainProgressBar
from lit_llm.callbacks.resume import ExactResume
from lit_llm.callbacks.stage_times import StageTimes
from lit_llm.training.checkpointing import AtomicCheckpointIO

__all__ = ["add_exact_resume", "add_plain_progress_bar", "cpu_allocator", "fastest_precision",
           "use_atomic_checkpoint_io"]


def cpu_allocator(trainer: Trainer) -> str | None:
    """Keep large freed blocks in the process when ``trainer`` runs on the CPU; a line saying so, or None.

    See :mod:`lit_llm.training.allocator` (13 ms a step of page faults on the main job's embedding gradient).
    """
    from lightning.pytorch.accelerators import CPUAccelerator

    from lit_llm.training.allocator import MALLOC_TUNING_ENV, keep_freed_memory

    if not isinstance(trainer.accelerator, CPUAccelerator) or not keep_freed_memory():
        return None
    return (f"CPU allocator: large freed blocks stay in the process, so steps reuse them instead of page-faulting "
            f"them anew ({MALLOC_TUNING_ENV}=0 turns this off)")


def fastest_precision(accelerator: Any) -> tuple[str | None, str]:
    """The Trainer precision ``--fastest_precision`` picks for ``accelerator`` (the config's value), and why.

    A CUDA GPU: ``bf16-mixed`` where it has bf16 (Ampere and later), else ``16-mixed`` (fp16 with loss scaling).
    A CPU: ``bf16-mixed`` where ``/proc/cpuinfo`` shows bf16 matmul hardware (``amx_bf16`` or ``avx512_bf16``),
    else ``32-true`` (torch's bf16 fallback kernels are slower than fp32 there); the same rule as
    ``lit-llm plan --hardware cpu``. Mixed precision keeps fp32 master weights. Any other accelerator: None (the
    config's precision is kept).
    """
    import torch

    from lit_llm.planning.cpu import local_cpuinfo

    name = str(accelerator or "auto").lower()
    if name in ("gpu", "cuda") or (name == "auto" and torch.cuda.is_available()):
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16-mixed", f"{torch.cuda.get_device_name()} has bf16"
        return "16-mixed", "this GPU has no bf16: fp16 with loss scaling"
    if name not in ("cpu", "auto"):
        return None, f"no rule for accelerator {name!r}: the config's precision is kept"
    info = local_cpuinfo()
    if info is None:
        return "32-true", "no /proc/cpuinfo to tell whether this CPU has bf16 hardware"
    unit = info.bf16_unit
    why = f"this CPU has {unit}" if unit != "none" else "this CPU has no amx_bf16 / avx512_bf16"
    return info.recommended_precision, why


def add_plain_progress_bar(trainer_cfg: Any) -> None:
    """Add a PlainProgressBar to an instantiated Trainer config when stdout is piped or redirected, unless the
    config chose a bar (any ProgressBar callback) or none (``enable_progress_bar: false``)."""
    if sys.stdout.isatty() or trainer_cfg.get("enable_progress_bar") is False:
        return
    callbacks = trainer_cfg.get("callbacks") or []
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    if not any(isinstance(cb, ProgressBar) for cb in callbacks):
        trainer_cfg["callbacks"] = [*callbacks, PlainProgressBar()]


def add_exact_resume(trainer: Trainer) -> None:
    """Append an :class:`~lit_llm.callbacks.ExactResume` unless the Trainer already has one."""
    if not any(isinstance(cb, ExactResume) for cb in trainer.callbacks):  # type: ignore[attr-defined]
        trainer.callbacks.append(ExactResume())  # type: ignore[attr-defined]


def add_stage_times(trainer: Trainer) -> StageTimes:
    """The Trainer's :class:`~lit_llm.callbacks.StageTimes` (appended when it has none), for the run summary."""
    for cb in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(cb, StageTimes):
            return cb
    times = StageTimes()
    trainer.callbacks.append(times)  # type: ignore[attr-defined]
    return times


def use_atomic_checkpoint_io(trainer: Trainer) -> None:
    """Replace the strategy's default TorchCheckpointIO by :class:`~lit_llm.training.checkpointing.AtomicCheckpointIO`
    (a kill during a save never truncates a checkpoint); a checkpoint IO the user chose is kept."""
    strategy = trainer.strategy
    if type(getattr(strategy, "_checkpoint_io", None) or strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
