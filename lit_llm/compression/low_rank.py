"""Low-rank factorization of Linear layers by truncated SVD: ``W (out, in) ~= B (out, r) @ A (r, in)``.

Method card: the tensor-decomposition family (Denton et al. 2014; for transformers e.g. Noach & Goldberg 2020).
Each eligible Linear becomes :class:`LowRankLinear` (two thin matmuls), which is smaller and faster only when
``r * (in + out) < in * out``; layers where it would not be are left alone. Apply before fine-tuning so the
network recovers from the truncation. :func:`lit_llm.compression.save_low_rank` /
:func:`~lit_llm.compression.load_low_rank` save and reload the factorized model as it is (the saving kept);
:func:`merge_low_rank` multiplies the factors back into plain Linear layers (same function, rank-limited weights,
no saving) when a plain ``from_pretrained`` directory is needed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

from lit_llm.hf import BLOCK_PARAMETER_PATTERN

__all__ = ["DEFAULT_PATTERNS", "LowRankLinear", "factorize_linear", "factorize_model", "merge_low_rank", "choose_rank"]

# Linear layers inside the transformer blocks, as for pruning.
DEFAULT_PATTERNS: tuple[str, ...] = (BLOCK_PARAMETER_PATTERN,)


class LowRankLinear(nn.Module):
    """``y = B(A(x))``: ``A`` is ``Linear(in, r, bias=False)``, ``B`` is ``Linear(r, out)`` with the original bias."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.a = nn.Linear(in_features, rank, bias=False)
        self.b = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))  # (..., in) -> (..., r) -> (..., out)

    @property
    def has_bias(self) -> bool:
        """Whether ``B`` carries the original layer's bias."""
        return self.b.bias is not None

    @property
    def weight(self) -> torch.Tensor:
        """The dense equivalent ``B @ A`` ``(out, in)`` (for code that reads ``.weight``)."""
        return self.b.weight @ self.a.weight


def choose_rank(singular_values: torch.Tensor, rank: int | None = None, energy: float | None = None) -> int:
    """The rank to keep: ``rank`` itself, or the smallest one holding ``energy`` of ``sum(s^2)``.

    Example::
        >>> choose_rank(torch.tensor([3.0, 1.0, 0.0]), energy=0.9)
        1
    """
    if rank is not None:
        return max(1, min(rank, singular_values.numel()))
    assert energy is not None
    cumulative = torch.cumsum(singular_values.double() ** 2, 0)
    total = cumulative[-1].clamp(min=1e-30)
    return int(torch.searchsorted(cumulative / total, torch.tensor(energy, dtype=torch.float64)).item()) + 1


@torch.no_grad()
def factorize_linear(linear: nn.Linear, rank: int | None = None, energy: float | None = None) -> LowRankLinear | None:
    """SVD-factorize one Linear; None when the chosen rank would not save parameters.

    The singular values are split evenly between the factors (``A = sqrt(S) V^T``, ``B = U sqrt(S)``) so both
    start at the same scale for fine-tuning.
    """
    w = linear.weight.detach().float()  # (out, in)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)  # (out, k), (k,), (k, in)
    r = choose_rank(s, rank, energy)
    if r * (linear.in_features + linear.out_features) >= linear.in_features * linear.out_features:
        return None
    root = s[:r].sqrt()
    new = LowRankLinear(linear.in_features, linear.out_features, r, bias=linear.bias is not None)
    new.to(device=linear.weight.device, dtype=linear.weight.dtype)
    new.a.weight.copy_(root[:, None] * vh[:r])  # (r, in)
    new.b.weight.copy_(u[:, :r] * root[None, :])  # (out, r)
    if linear.bias is not None:
        new.b.bias.copy_(linear.bias)
    return new


def factorize_model(
    model: nn.Module,
    rank: int | None = None,
    energy: float | None = None,
    patterns: Iterable[str] | None = None,
) -> dict[str, int]:
    """Replace matching Linear layers by :class:`LowRankLinear` in place.

    Args:
        model: any module.
        rank: keep this many singular values per layer, or
        energy: keep the smallest rank holding this fraction of the squared singular values, in (0, 1].
        patterns: regexes of Linear layer names; default: inside the transformer blocks.

    Returns:
        ``{layer name: rank}`` for the layers replaced.

    Raises:
        ValueError: neither or both of rank / energy, a rank < 1, an energy outside (0, 1], patterns that match
            no Linear layer.

    Example::
        factorize_model(model, energy=0.9)
    """
    if (rank is None) == (energy is None):
        raise ValueError(
            f"low-rank factorization: give exactly one of rank= or energy= (got rank={rank!r}, energy={energy!r})."
        )
    if rank is not None and rank < 1:
        raise ValueError(f"low-rank factorization rank={rank!r}: must be >= 1.")
    if energy is not None and not 0.0 < energy <= 1.0:
        raise ValueError(f"low-rank factorization energy={energy!r}: must be in (0, 1], e.g. 0.9.")
    pats = [re.compile(p) for p in (DEFAULT_PATTERNS if patterns is None else patterns)]
    targets = [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear and any(p.search(n) for p in pats)]
    if not targets:
        raise ValueError(
            f"low-rank patterns {[p.pattern for p in pats]!r} match no Linear layer of {type(model).__name__}; "
            "give a regex that matches some layer names (see model.named_modules())."
        )
    done: dict[str, int] = {}
    for name, linear in targets:
        new = factorize_linear(linear, rank, energy)
        if new is not None:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, new)
            done[name] = new.rank
    return done


@torch.no_grad()
def merge_low_rank(model: nn.Module) -> int:
    """Multiply every :class:`LowRankLinear` back into a plain Linear (e.g. for an HF export); returns how many."""
    count = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, LowRankLinear):
            dense = nn.Linear(module.in_features, module.out_features, bias=module.b.bias is not None)
            dense.to(device=module.a.weight.device, dtype=module.a.weight.dtype)
            dense.weight.copy_(module.weight)
            if module.b.bias is not None:
                dense.bias.copy_(module.b.bias)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, dense)
            count += 1
    return count
