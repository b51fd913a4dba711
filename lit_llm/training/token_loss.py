"""Exact token-weighted loss over a whole optimizer step (gradient accumulation and data parallelism).

The usual recipe returns each micro-batch's *mean* token loss and lets the trainer divide it by the number
of accumulation steps: the update is then a mean of means, which over-weights tokens of micro-batches with
few targets (a padded causal-LM batch, a masked-LM batch that drew few masks). The quantity we want is::

    loss_step = sum over every target token t of the step (all micro-batches, all ranks) of loss_t / N_step

where ``N_step`` counts those targets. Hugging Face fixed this in transformers #34191 by prefetching the
whole accumulation window's batches to count ``num_items_in_batch`` before the first forward.

We get the same gradient without prefetching (which Lightning's loop does not allow and which would hold
all micro-batches in memory): every micro-batch back-propagates its *sum* of token losses, the module
counts its target tokens as it goes, and once the window is complete (Lightning's
``on_before_optimizer_step``, which runs after the last backward and before gradient clipping and the
optimizer) the count is all-reduced over ranks and the gradients are multiplied by one scalar that
turns the accumulated sum into the exact step mean. Gradients are linear in the loss, so this is exact.

Lightning divides each micro-batch loss by ``accumulate_grad_batches`` and DDP averages gradients over
``world_size`` ranks; :meth:`StepTokenNormalizer.scale` undoes both, so the factor is
``accumulate * world_size / N_step``.

This assumes every rank is a data-parallel replica whose gradients are averaged (DDP, FSDP / FSDP2 fully
sharded data parallel); with tensor or pipeline parallelism ``world_size`` is not the averaging factor.

Caveat: callbacks' ``on_before_optimizer_step`` hooks run before the module's, so a callback that reads
gradients there (e.g. a gradient-norm logger) sees them before this rescale. Clipping and the optimizer
see the exact ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_llm.text.masking import IGNORE_INDEX

__all__ = ["token_cross_entropy", "causal_targets", "StepTokenNormalizer", "scale_gradients"]


def token_cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, Tensor]:
    """Sum of per-token cross-entropies and the number of target tokens.

    Args:
        logits: (..., V) scores; computed in float32 whatever their dtype, as HF models do.
        labels: (...) target ids, ``ignore_index`` where there is no target.
        ignore_index: label value to skip.

    Returns:
        ``(loss_sum, count)``: a scalar float tensor and a scalar long tensor.

    Example::
        loss_sum, n = token_cross_entropy(model(**batch).logits, labels)
        mean = loss_sum / n.clamp(min=1)
    """
    flat_logits = logits.reshape(-1, logits.shape[-1]).float()  # (B*T, V)
    flat_labels = labels.reshape(-1)  # (B*T,)
    loss_sum = F.cross_entropy(flat_logits, flat_labels, ignore_index=ignore_index, reduction="sum")
    count = (flat_labels != ignore_index).sum()
    return loss_sum, count


def causal_targets(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Align next-token predictions with their targets: position t predicts token t + 1.

    Args:
        logits: (B, T, V).
        labels: (B, T), ``IGNORE_INDEX`` on padding.

    Returns:
        ``(logits[:, :-1], labels[:, 1:])``, shapes (B, T-1, V) and (B, T-1).
    """
    return logits[:, :-1, :], labels[:, 1:]


def scale_gradients(parameters: Iterable[torch.nn.Parameter], factor: float | Tensor) -> None:
    """Multiply every existing ``.grad`` in place by ``factor``."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if grads:
        torch._foreach_mul_(grads, factor)


class StepTokenNormalizer:
    """Counts target tokens over an optimizer step and rescales summed-loss gradients to the exact step mean.

    Use it in a LightningModule whose ``training_step`` returns the *sum* of token losses (see the module
    docstring for why this is exact)::

        def training_step(self, batch, batch_idx):
            loss_sum, count = token_cross_entropy(logits, labels)
            self.normalizer.add(count)
            return loss_sum

        def on_before_optimizer_step(self, optimizer):
            self.normalizer.scale(self.parameters(), accumulate=self.trainer.accumulate_grad_batches,
                                  world_size=self.trainer.world_size, all_reduce_sum=...)

    It also works in a plain loop: ``accumulate=1, world_size=1`` when the loop sums the micro-batch losses
    itself.
    """

    def __init__(self) -> None:
        self._count: Tensor | None = None

    def add(self, count: Tensor) -> None:
        """Add one micro-batch's number of target tokens (a scalar tensor; stays on its device, no sync)."""
        count = count.detach().long()
        self._count = count if self._count is None else self._count + count

    @property
    def pending(self) -> Tensor | None:
        """Target tokens counted on this rank since the last :meth:`scale`."""
        return self._count

    def scale(
        self,
        parameters: Iterable[torch.nn.Parameter],
        *,
        accumulate: int,
        world_size: int,
        all_reduce_sum: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor:
        """Turn accumulated summed-loss gradients into gradients of the step's token mean; reset the count.

        Args:
            parameters: the parameters whose ``.grad`` hold the accumulated (and rank-averaged) gradients.
            accumulate: the divisor the trainer applied to each micro-batch loss (1 if none).
            world_size: the number of ranks whose gradients were averaged (1 if none).
            all_reduce_sum: sums a tensor over ranks (e.g. ``lambda t: strategy.reduce(t, reduce_op="sum")``);
                None on one process.

        Returns:
            ``N_step``, the number of target tokens of the step over all ranks (long scalar tensor).
        """
        count = self._count if self._count is not None else torch.zeros((), dtype=torch.long)
        self._count = None
        if all_reduce_sum is not None:
            count = all_reduce_sum(count)
        n_step = count.clamp(min=1)  # a step with no target has zero gradients; avoid 0/0
        scale_gradients(parameters, accumulate * world_size / n_step.double().item())
        return count
