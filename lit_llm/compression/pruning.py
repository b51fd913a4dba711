"""Magnitude pruning of transformer Linear layers: masks, the cubic schedule, structured heads / FFN neurons.

The functional core of :class:`lit_llm.callbacks.Pruning`; every function works on a plain ``nn.Module`` in any
training loop. Masks are boolean tensors keyed by parameter name (``True`` = kept). They are applied by writing
zeros into the weights in place, so the model is always a plain model (no parametrization, no ``weight_orig``):
its ``state_dict`` loads into a fresh HF model and "making pruning permanent" only means dropping the masks.

Structured pruning zeroes whole attention heads (their rows of query / key / value and their columns of the
attention output projection) and whole FFN neurons (a row of the intermediate projection and a column of the
output projection). :func:`shrink_structured` then slices those away so the layers really get smaller; it
removes exactly the heads / neurons whose output-projection columns are all zero, so the shrunk model computes
the same function.

Method card: Zhu & Gupta 2017, "To prune, or not to prune" (gradual magnitude pruning, cubic schedule);
Michel et al. 2019, "Are sixteen heads really better than one?" (head pruning). Expect ~50% unstructured
sparsity at little accuracy cost after fine-tuning; only structured pruning makes a dense CPU model faster.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from lit_llm.hf import BLOCK_PARAMETER_PATTERN

__all__ = [
    "DEFAULT_PATTERNS",
    "Masks",
    "StructuredUnit",
    "apply_masks",
    "cubic_sparsity",
    "find_structured_units",
    "find_target_linears",
    "magnitude_masks",
    "measure_sparsity",
    "resize_structured",
    "shrink_structured",
    "structured_masks",
]

Masks = dict[str, torch.Tensor]
Scope = Literal["global", "per_layer"]

# Linear layers inside the transformer blocks of BERT-likes (encoder.layer.i), GPT-2 (h.i) and Llama-likes
# (layers.i); embeddings, pooler and task heads sit outside the blocks and are left alone.
DEFAULT_PATTERNS: tuple[str, ...] = (BLOCK_PARAMETER_PATTERN,)


def cubic_sparsity(step: int, final: float, start_step: int, end_step: int, initial: float = 0.0) -> float:
    """Target sparsity at optimizer step ``step`` under Zhu & Gupta's cubic schedule.

    ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0)) ** 3`` between ``start_step`` (t0) and ``end_step`` (t1):
    prunes fast while the redundant weights go, then slowly. Before ``start_step`` it is 0; from ``end_step`` on
    it is ``final``. ``end_step == start_step`` is one-shot pruning.

    Args:
        step: the optimizer step (``trainer.global_step``).
        final: the final sparsity, in [0, 1).
        start_step: first step at which pruning happens.
        end_step: step at which ``final`` is reached.
        initial: sparsity at ``start_step``.

    Example::
        >>> cubic_sparsity(50, final=0.8, start_step=0, end_step=100)
        0.7
    """
    if step < start_step:
        return 0.0
    if end_step <= start_step or step >= end_step:
        return final
    progress = (step - start_step) / (end_step - start_step)
    return final + (initial - final) * (1.0 - progress) ** 3


def find_target_linears(model: nn.Module, patterns: Iterable[str] | None = None) -> dict[str, nn.Module]:
    """The Linear (or HF ``Conv1D``) layers whose qualified name matches one of ``patterns``.

    Args:
        model: any module.
        patterns: regular expressions searched in the module name (``re.search``), or globs when they contain
            ``*`` without other regex syntax (``"*.attention.*"``). Default: :data:`DEFAULT_PATTERNS`.

    Raises:
        ValueError: no Linear layer matches; the message lists a few names that exist.

    Example::
        find_target_linears(model, [r"attention\\.self\\.(query|key|value)"])
    """
    pats = list(DEFAULT_PATTERNS if patterns is None else patterns)
    compiled = [re.compile(fnmatch.translate(p)) if _is_glob(p) else re.compile(p) for p in pats]
    linears = {name: m for name, m in model.named_modules() if _is_linear(m)}
    found = {name: m for name, m in linears.items() if any(c.search(name) for c in compiled)}
    if not found:
        examples = ", ".join(list(linears)[:5]) or "none"
        raise ValueError(
            f"pruning patterns {pats!r} match no Linear layer of {type(model).__name__}; "
            f"Linear layers are named like: {examples}. Give a regex that matches some of them."
        )
    return found


def _is_glob(pattern: str) -> bool:
    return "*" in pattern and not any(c in pattern for c in "\\()[]+^$|")


def _is_linear(module: nn.Module) -> bool:
    # transformers' Conv1D (GPT-2) is a Linear with a transposed weight; magnitude pruning treats it the same.
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _check_amount(amount: float) -> None:
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"pruning amount={amount!r}: must be in [0, 1), e.g. 0.5 for 50% sparsity.")


def magnitude_masks(
    model: nn.Module,
    amount: float,
    patterns: Iterable[str] | None = None,
    scope: Scope = "global",
    previous: Masks | None = None,
) -> Masks:
    """Unstructured magnitude masks: the ``amount`` fraction of smallest-``|w|`` weights is pruned.

    Exactly ``round(amount * n)`` weights are pruned (over all targets for ``global``, per layer for
    ``per_layer``); weights pruned in ``previous`` stay pruned, so a growing schedule never revives a weight.

    Args:
        model: the model; only the ``weight`` of target layers is pruned, biases stay.
        amount: fraction to prune, in [0, 1).
        patterns: see :func:`find_target_linears`.
        scope: ``global`` ranks all target weights together (layers end up with different sparsity);
            ``per_layer`` prunes every layer by ``amount``.
        previous: masks from an earlier call.

    Returns:
        ``{"<module>.weight": bool mask}``, True where the weight is kept.

    Raises:
        ValueError: ``amount`` outside [0, 1), an unknown scope, or patterns that match nothing.

    Example::
        masks = magnitude_masks(model, 0.5)
        apply_masks(model, masks)
    """
    _check_amount(amount)
    if scope not in ("global", "per_layer"):
        raise ValueError(f"pruning scope={scope!r}: choose 'global' or 'per_layer'.")
    targets = find_target_linears(model, patterns)
    previous = previous or {}
    scores: dict[str, torch.Tensor] = {}
    for name, module in targets.items():
        key = f"{name}.weight"
        weight: torch.Tensor = module.weight  # type: ignore[assignment]  # a Linear / Conv1D weight
        score = _full(weight.detach()).abs().float()
        if key in previous:
            # -1 ranks already-pruned weights below every live one, so they are chosen first again.
            score = torch.where(previous[key].to(score.device), score, torch.full_like(score, -1.0))
        scores[key] = score
    masks: Masks = {}
    if scope == "per_layer":
        for key, score in scores.items():
            masks[key] = _keep_largest(score.flatten(), amount).view_as(score)
        return masks
    flat = torch.cat([s.flatten() for s in scores.values()])  # (N,) all target weights
    keep = _keep_largest(flat, amount)
    offset = 0
    for key, score in scores.items():
        masks[key] = keep[offset : offset + score.numel()].view_as(score)
        offset += score.numel()
    return masks


def _keep_largest(scores: torch.Tensor, amount: float) -> torch.Tensor:
    """Bool mask of ``scores`` (1-D) with the ``round(amount * n)`` smallest entries False."""
    k = int(round(amount * scores.numel()))
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k > 0:
        # topk, not a threshold: ties (many exact zeros) would otherwise prune more than asked.
        keep[torch.topk(scores, k, largest=False, sorted=False).indices] = False
    return keep


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Write zeros into ``model``'s parameters where ``masks`` is False (in place, any device, DTensor too).

    Call it after every optimizer step: Adam's momentum moves pruned weights away from zero otherwise.

    Raises:
        KeyError: a mask names a parameter the model does not have.
    """
    params = dict(model.named_parameters())
    for key, mask in masks.items():
        if key not in params:
            raise KeyError(
                f"pruning mask for {key!r} but the model has no such parameter; masks come from another model "
                "(was the model changed after pruning started, or a checkpoint of a different model loaded?)."
            )
        param = params[key]
        local = _local(param)
        mask = _local_mask(param, mask).to(device=local.device)
        local.mul_(mask.to(local.dtype))


def _full(t: torch.Tensor) -> torch.Tensor:
    # Under FSDP2 a DTensor shard: gather the whole weight (a collective every rank runs in the same order).
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _local(param: torch.Tensor) -> torch.Tensor:
    # Under FSDP2 the parameter is a DTensor; write into this rank's shard.
    return param.to_local() if hasattr(param, "to_local") else param.data


def _local_mask(param: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if hasattr(param, "to_local") and mask.shape != param.to_local().shape:
        from torch.distributed.tensor import distribute_tensor

        # uint8 because not every backend (gloo) scatters bool tensors; every rank holds the same full mask.
        full = mask.to(device=param.device, dtype=torch.uint8)
        mesh, placements = param.device_mesh, param.placements  # type: ignore[attr-defined]  # a DTensor
        return distribute_tensor(full, mesh, placements).to_local().bool()
    return mask


def measure_sparsity(model: nn.Module, keys: Iterable[str]) -> tuple[int, int]:
    """Count exact zeros: ``(zeros, total)`` over the named parameters (what is measured, not what was asked).

    Under FSDP2 it counts this rank's shards; sum over ranks for the global figure.
    """
    params = dict(model.named_parameters())
    zeros = total = 0
    for key in keys:
        local = _local(params[key])
        zeros += int((local == 0).sum())
        total += local.numel()
    return zeros, total


@dataclass
class StructuredUnit:
    """One transformer block's prunable structure (BERT-family naming).

    Attributes:
        block: the block's module name, e.g. ``bert.encoder.layer.0``.
        qkv: names of the query, key and value Linear layers (heads are groups of their output rows).
        attn_out: name of the attention output projection (heads are groups of its input columns).
        ffn_in: name of the intermediate Linear (neurons are its output rows).
        ffn_out: name of the FFN output Linear (neurons are its input columns).
        num_heads: current number of heads.
        head_size: width of one head.
    """

    block: str
    qkv: tuple[str, str, str]
    attn_out: str
    ffn_in: str
    ffn_out: str
    num_heads: int
    head_size: int


def find_structured_units(model: nn.Module) -> list[StructuredUnit]:
    """The blocks of a BERT-family model (BERT, RoBERTa, MiniLM, ELECTRA...) for head / neuron pruning.

    Raises:
        ValueError: the model has no BERT-style blocks (``attention.self.query`` ...); structured pruning of
            other architectures is not supported, use unstructured pruning.
    """
    modules = dict(model.named_modules())
    units = []
    for name, module in modules.items():
        if not name.endswith("attention.self") or not hasattr(module, "query"):
            continue
        block = name[: -len(".attention.self")]
        needed = [f"{block}.attention.output.dense", f"{block}.intermediate.dense", f"{block}.output.dense"]
        if not all(n in modules for n in needed):
            continue
        head_size = int(module.attention_head_size)
        units.append(
            StructuredUnit(
                block=block,
                qkv=(f"{name}.query", f"{name}.key", f"{name}.value"),
                attn_out=needed[0],
                ffn_in=needed[1],
                ffn_out=needed[2],
                num_heads=module.query.out_features // head_size,
                head_size=head_size,
            )
        )
    if not units:
        raise ValueError(
            f"structured pruning needs BERT-style blocks (<block>.attention.self.query / .intermediate.dense); "
            f"{type(model).__name__} has none. Use mode='unstructured' (magnitude pruning of single weights)."
        )
    return units


def structured_masks(
    model: nn.Module,
    heads: float = 0.0,
    neurons: float = 0.0,
    scope: Scope = "global",
    previous: Masks | None = None,
) -> Masks:
    """Masks that remove whole attention heads and FFN neurons with the smallest L2 weight norm.

    A head's score is the norm of its query / key / value rows and attention-output columns; a neuron's is the
    norm of its intermediate row and output column. ``global`` ranks across all blocks (a block may lose more
    heads than another; at least one head per block is always kept), ``per_layer`` prunes each block equally.

    Args:
        model: a BERT-family model (see :func:`find_structured_units`).
        heads: fraction of attention heads to prune, in [0, 1).
        neurons: fraction of FFN neurons to prune, in [0, 1).
        scope: ``global`` or ``per_layer``.
        previous: earlier masks; what they pruned stays pruned.

    Returns:
        Masks for weights and biases of the affected layers (True = kept).

    Example::
        masks = structured_masks(model, heads=0.3, neurons=0.3)
        apply_masks(model, masks)
        shrink_structured(model)  # now really smaller
    """
    _check_amount(heads)
    _check_amount(neurons)
    if scope not in ("global", "per_layer"):
        raise ValueError(f"pruning scope={scope!r}: choose 'global' or 'per_layer'.")
    units = find_structured_units(model)
    mods = dict(model.named_modules())
    prev = previous or {}
    head_scores, neuron_scores = [], []
    for u in units:
        hs = u.head_size
        sq = sum(_full(mods[n].weight.detach()).float().pow(2).view(u.num_heads, hs, -1).sum(dim=(1, 2)) for n in u.qkv)
        sq = sq + _full(mods[u.attn_out].weight.detach()).float().pow(2).view(-1, u.num_heads, hs).sum(dim=(0, 2))
        head_scores.append(_revive_guard(sq.sqrt(), prev.get(f"{u.attn_out}.weight"), axis="col", group=hs))
        ns = _full(mods[u.ffn_in].weight.detach()).float().pow(2).sum(1)
        ns = ns + _full(mods[u.ffn_out].weight.detach()).float().pow(2).sum(0)
        neuron_scores.append(_revive_guard(ns.sqrt(), prev.get(f"{u.ffn_out}.weight"), axis="col", group=1))
    head_keep = _rank(head_scores, heads, scope, min_keep=1)
    neuron_keep = _rank(neuron_scores, neurons, scope, min_keep=1)
    masks: Masks = {}
    for u, hk, nk in zip(units, head_keep, neuron_keep):
        rows = hk.repeat_interleave(u.head_size)  # (num_heads * head_size,)
        for n in u.qkv:
            masks[f"{n}.weight"] = rows[:, None].expand_as(mods[n].weight).clone()
            masks[f"{n}.bias"] = rows.clone()
        masks[f"{u.attn_out}.weight"] = rows[None, :].expand_as(mods[u.attn_out].weight).clone()
        masks[f"{u.ffn_in}.weight"] = nk[:, None].expand_as(mods[u.ffn_in].weight).clone()
        masks[f"{u.ffn_in}.bias"] = nk.clone()
        masks[f"{u.ffn_out}.weight"] = nk[None, :].expand_as(mods[u.ffn_out].weight).clone()
    return {k: v for k, v in masks.items() if k in dict(model.named_parameters())}


def _revive_guard(score: torch.Tensor, prev_mask: torch.Tensor | None, axis: str, group: int) -> torch.Tensor:
    if prev_mask is None:
        return score
    kept = prev_mask.any(dim=0).view(-1, group).any(dim=1).to(score.device)  # (units,)
    return torch.where(kept, score, torch.full_like(score, -1.0))


def _rank(scores: list[torch.Tensor], amount: float, scope: Scope, min_keep: int) -> list[torch.Tensor]:
    if scope == "per_layer":
        out = []
        for s in scores:
            k = min(int(round(amount * s.numel())), s.numel() - min_keep)
            out.append(_keep_largest(s, k / s.numel()))
        return out
    flat = torch.cat(scores)
    keep = _keep_largest(flat, amount)
    out, offset = [], 0
    for s in scores:
        part = keep[offset : offset + s.numel()].clone()
        if int(part.sum()) < min_keep:
            # A block with no head left would break attention; keep its strongest one.
            part[torch.topk(s, min_keep).indices] = True
        out.append(part)
        offset += s.numel()
    return out


@torch.no_grad()
def shrink_structured(model: nn.Module) -> dict[str, int]:
    """Slice away heads and FFN neurons whose output-projection columns are all zero; the function is unchanged.

    A head or neuron whose columns in the output projection are zero contributes nothing, whatever its other
    weights, so removing it is exact. Updates each attention module's ``num_attention_heads`` / ``all_head_size``.
    Heads may differ per block afterwards, which HF configs cannot express: to save and reload a shrunk model use
    :func:`lit_llm.compression.save_pruned` / :func:`~lit_llm.compression.load_pruned`.

    Returns:
        ``{"heads_removed": ..., "neurons_removed": ...}``.

    Example::
        apply_masks(model, structured_masks(model, heads=0.3))
        shrink_structured(model)
    """
    mods = dict(model.named_modules())
    removed = {"heads_removed": 0, "neurons_removed": 0}
    for u in find_structured_units(model):
        out = mods[u.attn_out]
        alive = out.weight.view(out.out_features, u.num_heads, u.head_size).ne(0).any(dim=(0, 2))  # (heads,)
        if not alive.any():
            alive[0] = True  # attention with zero heads cannot run; one dead head adds only its bias (zero)
        if not alive.all():
            _keep_heads(model, mods, u, alive)
            removed["heads_removed"] += int((~alive).sum())
        alive_n = mods[u.ffn_out].weight.ne(0).any(dim=0)  # (intermediate,)
        if not alive_n.any():
            alive_n[0] = True
        if not alive_n.all():
            _keep_neurons(model, mods, u, alive_n)
            removed["neurons_removed"] += int((~alive_n).sum())
    return removed


@torch.no_grad()
def resize_structured(model: nn.Module, widths: dict[str, tuple[int, int]]) -> None:
    """Give blocks the given number of heads and FFN width, keeping the first ones (the shapes, not the values).

    The loader's half of :func:`shrink_structured`: a model built from its (full-width) config is resized to the
    widths a shrunk model had, then the shrunk weights are loaded into it.

    Args:
        model: a BERT-family model (see :func:`find_structured_units`).
        widths: ``{block name: (num_attention_heads, intermediate_size)}``; blocks not named keep their size.

    Raises:
        KeyError: a block name that is not a block of ``model``.
        ValueError: more heads or neurons than the block has, or fewer than one.

    Example::
        resize_structured(model, {"bert.encoder.layer.0": (2, 20)})
    """
    if not widths:
        return
    mods = dict(model.named_modules())
    units = {u.block: u for u in find_structured_units(model)}
    for block, (heads, intermediate) in widths.items():
        if block not in units:
            raise KeyError(f"{block!r} is not a transformer block of {type(model).__name__}; blocks: {list(units)}")
        u = units[block]
        width = mods[u.ffn_in].out_features
        if not 1 <= heads <= u.num_heads or not 1 <= intermediate <= width:
            raise ValueError(
                f"{block}: {heads} heads / FFN width {intermediate} do not fit a block of {u.num_heads} heads / "
                f"width {width} (each must be in 1..the block's size)"
            )
        if heads < u.num_heads:
            _keep_heads(model, mods, u, torch.arange(u.num_heads) < heads)
        if intermediate < width:
            _keep_neurons(model, mods, u, torch.arange(width) < intermediate)


def _keep_heads(model: nn.Module, mods: dict[str, nn.Module], u: StructuredUnit, alive: torch.Tensor) -> None:
    idx = torch.nonzero(alive.repeat_interleave(u.head_size)).flatten()  # rows of q/k/v, columns of attn_out
    for n in u.qkv:
        _replace(model, n, _slice_linear(_linear(mods, n), idx, dim=0))
    _replace(model, u.attn_out, _slice_linear(_linear(mods, u.attn_out), idx, dim=1))
    attn = mods[u.qkv[0].rsplit(".", 1)[0]]
    heads = int(alive.sum())
    # HF attention modules read these two attributes in forward; setattr keeps them plain ints
    setattr(attn, "num_attention_heads", heads)  # noqa: B010
    setattr(attn, "all_head_size", heads * u.head_size)  # noqa: B010


def _keep_neurons(model: nn.Module, mods: dict[str, nn.Module], u: StructuredUnit, alive: torch.Tensor) -> None:
    idx = torch.nonzero(alive).flatten()
    _replace(model, u.ffn_in, _slice_linear(_linear(mods, u.ffn_in), idx, dim=0))
    _replace(model, u.ffn_out, _slice_linear(_linear(mods, u.ffn_out), idx, dim=1))


def _linear(mods: dict[str, nn.Module], name: str) -> nn.Linear:
    module = mods[name]
    if not isinstance(module, nn.Linear):
        raise TypeError(f"{name} is a {type(module).__name__}, not the nn.Linear structured pruning slices")
    return module


def _slice_linear(linear: nn.Linear, idx: torch.Tensor, dim: int) -> nn.Linear:
    w = linear.weight.index_select(dim, idx.to(linear.weight.device))
    new = nn.Linear(w.shape[1], w.shape[0], bias=linear.bias is not None, device=w.device, dtype=w.dtype)
    new.weight.copy_(w)
    if linear.bias is not None:
        new.bias.copy_(linear.bias.index_select(0, idx.to(w.device)) if dim == 0 else linear.bias)
    return new


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
