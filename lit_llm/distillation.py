"""Knowledge distillation: the losses, the training-objective hook our modules call, and student initialization.

Method card: Hinton et al. 2015 (soft targets, KL at temperature T scaled by T^2 so gradients keep their size),
Sanh et al. 2019 DistilBERT (student = every other teacher layer; keeps ~97% of the accuracy, 60% faster),
Jiao et al. 2020 TinyBERT (hidden-state MSE through a learned projection when widths differ).

**The one-line contract.** A callback cannot change the loss a ``training_step`` returns, so training
objectives (the :class:`lit_llm.callbacks.DistillationTeacher`) attach themselves to the module and the
module's ``training_step`` passes its loss through :func:`apply_training_objectives`::

    outputs = self.model(**batch)
    loss = apply_training_objectives(self, batch, outputs, outputs.loss)   # the one line
    return loss

It returns ``loss`` unchanged when nothing is attached, so the line costs nothing in runs without a teacher.
``outputs`` must have ``logits`` (any HF ``ModelOutput`` has).
"""

from __future__ import annotations

import copy
import re
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "TrainingObjective",
    "apply_training_objectives",
    "attach_objective",
    "detach_objective",
    "find_blocks",
    "hidden_state_loss",
    "kd_loss",
    "student_from_teacher",
]

_ATTR = "_lit_llm_training_objectives"
_BLOCK_NAME = re.compile(r"(^|\.)(layer|layers|h|blocks)$")


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


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 2.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over examples (or unmasked tokens).

    Args:
        student_logits: ``(B, C)`` or ``(B, L, V)``.
        teacher_logits: same shape as the student's.
        temperature: softening temperature ``T`` > 0.
        mask: optional ``(B, L)`` bool / 0-1 mask of token positions to include.

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
        return (per_row * weights).sum() / weights.sum().clamp(min=1.0) * temperature**2
    return per_row.mean() * temperature**2


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


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of transformer blocks (``encoder.layer``, ``h``, ``layers``, ``blocks``).

    Raises:
        ValueError: none found.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and _BLOCK_NAME.search(name) and len(module) > 0:
            return name, module
    raise ValueError(
        f"{type(model).__name__} has no ModuleList of transformer blocks named layer / layers / h / blocks; "
        "layer selection and hidden-state distillation need one."
    )


def student_from_teacher(teacher: nn.Module, keep_every: int = 2) -> nn.Module:
    """A smaller copy of ``teacher`` keeping blocks 0, k, 2k, ... (DistilBERT's initialization, k = 2).

    Embeddings, pooler and head are copied; the config's layer count is updated, so ``save_pretrained`` /
    ``from_pretrained`` round-trip. The teacher is not modified.

    Args:
        teacher: an HF model (or any module with a block ModuleList, see :func:`find_blocks`).
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
                module.layer_idx = new_idx
    parent, _, child = name.rpartition(".")
    setattr(student.get_submodule(parent) if parent else student, child, kept)
    config = getattr(student, "config", None)
    if config is not None:
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if hasattr(config, key):
                setattr(config, key, len(kept))
        if getattr(config, "layer_types", None):
            config.layer_types = [config.layer_types[i] for i in range(0, len(blocks), keep_every)]
    return student
