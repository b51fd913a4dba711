"""Knowledge distillation: the losses, the token-selection contract our modules use, and student initialization.

Method card: Hinton et al. 2015 (soft targets, KL at temperature T scaled by T^2 so gradients keep their size),
Sanh et al. 2019 DistilBERT (student = every other teacher layer; soft targets on the masked positions; keeps ~97%
of the accuracy, 60% faster), Jiao et al. 2020 TinyBERT (hidden-state MSE through a learned projection when widths
differ).

**Contract.** :class:`lit_llm.callbacks.DistillationTeacher` is a drop-in: it wraps the module's ``training_step``
and mixes its distillation term into the loss that step returns; nothing in ``training_step`` has to change. By
default token-level logits are distilled on every non-padding position of the student's forward, and the task loss
is taken to be a mean. A module that scores only some positions (a masked LM), or that returns a *sum* over target
tokens (exact token normalization), says so with one call inside its step::

    mark_distillation_targets(self, target_mask, reduction="sum")   # (B, T) bool

A module may still pass its loss through :func:`apply_training_objectives` itself (the contract of earlier
versions, and the way to distill under manual optimization); the callback then does not add its term a second time.
"""

from __future__ import annotations

import copy
from typing import Any, Literal, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from lit_llm.hf import CONFIG_ALIASES, find_blocks

__all__ = [
    "TrainingObjective",
    "apply_training_objectives",
    "attach_objective",
    "detach_objective",
    "DistillationTargets",
    "distillation_targets",
    "mark_distillation_targets",
    "select_targets",
    "hidden_state_loss",
    "kd_loss",
    "student_from_teacher",
]

_ATTR = "_lit_llm_training_objectives"
_TARGETS_ATTR = "_lit_llm_distillation_targets"


class TrainingObjective(Protocol):
    """Something that turns the task loss into the training loss (e.g. mixes in a distillation term)."""

    def __call__(self, module: nn.Module, batch: Any, outputs: Any, loss: torch.Tensor) -> torch.Tensor: ...


def attach_objective(module: nn.Module, objective: TrainingObjective) -> None:
    """Register ``objective`` on ``module`` (a plain attribute: never a submodule, never in the state_dict)."""
    objectives = module.__dict__.setdefault(_ATTR, [])
    if objective not in objectives:
        objectives.append(objective)


def detach_objective(module: nn.Module, objective: TrainingObjective) -> None:
    """Remove ``objective`` from ``module`` if attached."""
    objectives = module.__dict__.get(_ATTR, [])
    if objective in objectives:
        objectives.remove(objective)


def apply_training_objectives(module: nn.Module, batch: Any, outputs: Any, loss: torch.Tensor) -> torch.Tensor:
    """The loss to backpropagate: ``loss`` passed through every attached objective (unchanged if none).

    Args:
        module: the LightningModule (``self`` in ``training_step``).
        batch: the training batch.
        outputs: the student's forward outputs (with ``logits``).
        loss: the task loss.

    Example::
        loss = apply_training_objectives(self, batch, outputs, outputs.loss)
    """
    for objective in module.__dict__.get(_ATTR, []):
        loss = objective(module, batch, outputs, loss)
    return loss


class DistillationTargets(NamedTuple):
    """Which token positions a module's task loss scores, and how that loss is reduced over them.

    Attributes:
        positions: ``(B, T)`` bool mask over the student's input positions. The student's logits are either dense
            ``(B, T, V)`` or already restricted to these positions ``(N, V)`` in row-major order (``N =
            positions.sum()``, e.g. a masked LM that runs its head on the masked tokens only).
        reduction: ``"mean"`` (the task loss is a mean over the targets) or ``"sum"`` (a sum, normalized later,
            e.g. by :class:`lit_llm.training.token_loss.StepTokenNormalizer`).
    """

    positions: torch.Tensor
    reduction: Literal["mean", "sum"] = "mean"


def mark_distillation_targets(
    module: nn.Module, positions: torch.Tensor, reduction: Literal["mean", "sum"] = "mean"
) -> None:
    """Record, for the current training step, the positions the task loss scores and its reduction.

    A plain attribute of ``module`` (never in its state_dict); read by distillation objectives after the step.

    Args:
        module: the LightningModule (``self``).
        positions: ``(B, T)`` bool mask of target positions.
        reduction: ``"mean"`` or ``"sum"`` (see :class:`DistillationTargets`).

    Raises:
        ValueError: an unknown reduction.

    Example::
        mark_distillation_targets(self, labels != -100, reduction="sum")
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"mark_distillation_targets(reduction={reduction!r}): must be 'mean' or 'sum'.")
    module.__dict__[_TARGETS_ATTR] = DistillationTargets(positions.detach().bool(), reduction)


def distillation_targets(module: nn.Module, clear: bool = False) -> DistillationTargets | None:
    """What :func:`mark_distillation_targets` recorded on ``module`` (None if nothing); ``clear`` forgets it."""
    return module.__dict__.pop(_TARGETS_ATTR, None) if clear else module.__dict__.get(_TARGETS_ATTR)


def select_targets(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's and the teacher's logits at ``positions``, both ``(N, V)``, row for row.

    Args:
        student_logits: ``(B, T, V)`` dense, or ``(N, V)`` already restricted to ``positions`` (row-major order).
        teacher_logits: ``(B, T, V)`` dense.
        positions: ``(B, T)`` bool.

    Raises:
        ValueError: the shapes do not fit ``positions``.

    Example::
        s, t = select_targets(student.logits, teacher.logits, labels != -100)
    """
    positions = positions.to(device=teacher_logits.device, dtype=torch.bool)
    if teacher_logits.dim() != 3 or teacher_logits.shape[:2] != positions.shape:
        raise ValueError(
            f"distillation: teacher logits {tuple(teacher_logits.shape)} do not cover the target positions "
            f"{tuple(positions.shape)}; the teacher must see the student's inputs."
        )
    teacher = teacher_logits[positions]  # (N, V)
    if student_logits.dim() == 3 and student_logits.shape[:2] == positions.shape:
        return student_logits[positions], teacher
    if student_logits.dim() == 2 and student_logits.shape[0] == teacher.shape[0]:
        return student_logits, teacher
    raise ValueError(
        f"distillation: student logits {tuple(student_logits.shape)} match neither the {tuple(positions.shape)} "
        f"positions nor their {teacher.shape[0]} targets; mark_distillation_targets must describe the logits the "
        "student returned."
    )


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 2.0,
    mask: torch.Tensor | None = None,
    reduction: Literal["mean", "sum"] = "mean",
) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over examples (or unmasked tokens).

    Args:
        student_logits: ``(B, C)`` or ``(B, L, V)``.
        teacher_logits: same shape as the student's.
        temperature: softening temperature ``T`` > 0.
        mask: optional ``(B, L)`` bool / 0-1 mask of token positions to include.
        reduction: ``"mean"`` over the rows (or unmasked tokens), or their ``"sum"``.

    Raises:
        ValueError: shapes differ (a teacher with another vocabulary or label set).

    Example::
        loss = 0.5 * kd_loss(s.logits, t.logits, 2.0) + 0.5 * s.loss
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"distillation: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ; the teacher must share the student's vocabulary / label set."
        )
    n_classes = student_logits.shape[-1]
    s = F.log_softmax(student_logits.float().reshape(-1, n_classes) / temperature, dim=-1)  # (N, C)
    t = F.log_softmax(teacher_logits.float().reshape(-1, n_classes) / temperature, dim=-1)  # (N, C)
    per_row = F.kl_div(s, t, log_target=True, reduction="none").sum(-1)  # (N,)
    if mask is not None:
        weights = mask.reshape(-1).to(per_row.dtype)
        per_row = per_row * weights
        if reduction == "sum":
            return per_row.sum() * temperature**2
        return per_row.sum() / weights.sum().clamp(min=1.0) * temperature**2
    return (per_row.sum() if reduction == "sum" else per_row.mean()) * temperature**2


def hidden_state_loss(
    student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, projection: nn.Module | None = None
) -> torch.Tensor:
    """MSE between a student and a teacher hidden state ``(B, L, H)``, projecting the student's first if given."""
    student = projection(student_hidden) if projection is not None else student_hidden
    if student.shape != teacher_hidden.shape:
        raise ValueError(
            f"hidden-state distillation: student {tuple(student.shape)} vs teacher {tuple(teacher_hidden.shape)}; "
            "widths differ and no projection was given."
        )
    return F.mse_loss(student.float(), teacher_hidden.float())


def student_from_teacher(teacher: nn.Module, keep_every: int = 2) -> nn.Module:
    """A smaller copy of ``teacher`` keeping blocks 0, k, 2k, ... (DistilBERT's initialization, k = 2).

    Embeddings, pooler and head are copied; the config's layer count is updated, so ``save_pretrained`` /
    ``from_pretrained`` round-trip. The teacher is not modified.

    Args:
        teacher: an HF model (or any module with a block ModuleList, see :func:`lit_llm.hf.find_blocks`).
        keep_every: keep one block in ``keep_every``; >= 1.

    Raises:
        ValueError: ``keep_every < 1`` or no blocks found.

    Example::
        student = student_from_teacher(AutoModelForSequenceClassification.from_pretrained(d), keep_every=2)
    """
    if keep_every < 1:
        raise ValueError(f"student_from_teacher(keep_every={keep_every!r}): must be >= 1.")
    student = copy.deepcopy(teacher)
    name, blocks = find_blocks(student)
    kept = nn.ModuleList([blocks[i] for i in range(0, len(blocks), keep_every)])
    for new_idx, block in enumerate(kept):
        # Cache-aware attention layers remember their index; keep them consistent with the new depth.
        for module in block.modules():
            if hasattr(module, "layer_idx") and isinstance(module.layer_idx, int):
                module.layer_idx = new_idx  # type: ignore[assignment]  # an int attribute, not a Module/Tensor
    parent, _, child = name.rpartition(".")
    setattr(student.get_submodule(parent) if parent else student, child, kept)
    config = getattr(student, "config", None)
    if config is not None:
        for key in CONFIG_ALIASES["num_layers"]:
            if hasattr(config, key):
                setattr(config, key, len(kept))
        if getattr(config, "layer_types", None):
            config.layer_types = [config.layer_types[i] for i in range(0, len(blocks), keep_every)]
    return student
