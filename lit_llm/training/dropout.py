"""Dropout that draws its masks at the CPU's integer speed: the same layer, drawn several times faster.

torch's CPU dropout draws one float Bernoulli sample per element (``bernoulli_``, about 7 ns an element on the
2-core build machines) and then multiplies twice: in the main job's bf16 training step that was 46 ms of 317, 13% of
the step, more than anything but the matmuls (``benchmarks/step_profile.md``). Here each element's keep/drop
decision is read off 15 random bits (bf16 / fp16) or 31 (fp32) of torch's own generator (``random_`` on int32, two
elements per draw in 16-bit, one from each half), and the scaled mask is built with integer operations in the
input's dtype. The drop probability applied, p', is p rounded to a multiple of 2**-15 (2**-31 in fp32); kept
elements are scaled by ``1 / (1 - p')`` rounded to the input's dtype, so the mean is kept as torch's ``1 / (1 - p)``
keeps it (the two scales can differ by one unit in the dtype's last place). Where the rounding would move p by more
than 0.1% (some p below 0.015 in 16-bit), torch's dropout runs instead. It draws from torch's default generator, so
``seed_everything`` makes it reproducible, and gradient checkpointing, which restores that generator before
recomputing, draws the same masks again; it is not the same random stream as torch's.

Only CPU tensors take this path. Elsewhere (CUDA has a fused dropout kernel), under ``torch.compile`` (inductor
generates its own), for other dtypes and for ``inplace=True`` layers, torch's dropout runs. ``torch.func``
transforms (``vmap``, ``jvp``), ``torch.fx`` tracing in training mode and TorchScript (deprecated) fail on it: use
torch's ``nn.Dropout`` there.

Example::
    model = AutoModelForSequenceClassification.from_pretrained(path)
    use_fast_dropout(model)  # every nn.Dropout of the model, in place; weights and state_dict unchanged
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

__all__ = ["ATTENTION", "FastDropout", "fast_dropout", "sdpa_with_fast_dropout", "use_fast_dropout"]

# The name under which transformers' AttentionInterface runs :func:`sdpa_with_fast_dropout`.
ATTENTION = "lit_llm_sdpa"

# dtype -> (random bits per element, the integer dtype the mask is built in)
_LAYOUT = {torch.bfloat16: (15, torch.int16), torch.float16: (15, torch.int16), torch.float32: (31, torch.int32)}


@functools.lru_cache(maxsize=64)
def _mask_constants(p: float, dtype: torch.dtype) -> tuple[int, int]:
    """(threshold, bit pattern of the scale in ``dtype``): drop where the random value is below the threshold."""
    bits, int_dtype = _LAYOUT[dtype]
    threshold = round(p * 2**bits)
    scale = torch.tensor(2**bits / (2**bits - threshold), dtype=dtype)  # rounded to dtype, as torch's own dropout
    return threshold, int(scale.view(int_dtype).item())


def _usable(x: torch.Tensor, p: float) -> bool:
    if x.device.type != "cpu" or x.dtype not in _LAYOUT or torch.compiler.is_compiling():
        return False
    bits = _LAYOUT[x.dtype][0]
    threshold = round(p * 2**bits)
    # p' = threshold / 2**bits within 0.1% of p (not 0, not 1): elsewhere torch's dropout.
    return 0 < threshold < 2**bits and abs(threshold / 2**bits - p) <= 1e-3 * p


class _MaskedScale(torch.autograd.Function):
    """``x * mask`` with ``mask`` in {0, 1/(1-p)}; the backward multiplies by the same saved mask."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, p: float) -> torch.Tensor:
        n = x.numel()
        threshold, scale_bits = _mask_constants(p, x.dtype)
        if x.dtype == torch.float32:
            r = torch.empty(n, dtype=torch.int32).random_()  # uniform on [0, 2**31)
            r -= threshold
            r >>= 31  # -1 (all bits set) where dropped, 0 where kept
        else:
            # One int32 draw gives two 16-bit halves (the upper one 15 random bits); 15 bits of each are used.
            r = torch.empty((n + 1) // 2, dtype=torch.int32).random_().view(torch.int16)[:n]
            r &= 0x7FFF
            r -= threshold
            r >>= 15
        r.bitwise_not_()  # all bits set where kept
        r &= scale_bits  # the scale's bit pattern where kept, 0.0 where dropped
        mask = r.view(x.dtype).view(x.shape)
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (mask,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad * mask, None


def fast_dropout(x: torch.Tensor, p: float = 0.5, training: bool = True) -> torch.Tensor:
    """``torch.nn.functional.dropout`` with masks drawn from integer random bits on CPU (see the module docstring).

    Example::
        y = fast_dropout(torch.randn(4, 8), p=0.1)
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"fast_dropout(p={p!r}): p must be in [0, 1].")
    if not training or p == 0.0:
        return x
    if not _usable(x, p):
        return nn.functional.dropout(x, p, training=True)
    return _MaskedScale.apply(x, p)


class FastDropout(nn.Dropout):
    """``nn.Dropout`` whose CPU forward is :func:`fast_dropout`; an ``inplace=True`` layer runs torch's dropout.

    Example::
        layer = FastDropout(0.1)
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return super().forward(input)
        return fast_dropout(input, self.p, self.training)


def sdpa_with_fast_dropout(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' ``sdpa`` attention, with lit-llm's dropout masks on the attention probabilities on CPU.

    With dropout on, torch's CPU ``scaled_dot_product_attention`` runs its math path: in fp32 whatever the inputs'
    dtype, ``softmax(q k^T * scale + mask)`` (a row with every key masked gives zeros), dropout, ``@ v``, cast back
    to the inputs' dtype. This is that path with :func:`fast_dropout`'s masks (31-bit, on the fp32 probabilities).
    Everything else (evaluation, no dropout, other devices, grouped-query attention, position biases, ...) is
    transformers' ``sdpa_attention_forward`` unchanged. Registered in transformers' ``AttentionInterface`` as
    ``"lit_llm_sdpa"`` when this module is imported; the name is not saved with the model (``save_pretrained``
    leaves it out), so an export loads as ``sdpa``.

    Shapes: query ``(B, H, Tq, D)``, key and value ``(B, H, Tk, D)``; returns ``(B, Tq, H, D)``.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    plain = (not dropout or not module.training or not _usable(query, dropout) or kwargs.get("softcap") is not None
             or kwargs.get("position_bias") is not None or kwargs.get("output_attentions", False)
             or getattr(module, "num_key_value_groups", 1) > 1 or key.shape[:2] != query.shape[:2])
    if plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    q_length, kv_length = query.shape[-2], key.shape[-2]
    # transformers' rule for SDPA's causal flag: a causal module, no explicit mask, more than one query.
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if q_length > 1 and attention_mask is None and causal:
        # SDPA's is_causal is upper-left aligned
        attention_mask = torch.ones(q_length, kv_length, dtype=torch.bool, device=query.device).tril()
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    with torch.autocast("cpu", enabled=False):  # fp32 throughout, as torch's math path
        scores = torch.matmul(query.float(), key.float().transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
        empty = None  # query rows with no key to attend to: zeros, as torch's safe softmax
        if attention_mask is not None:
            if attention_mask.dtype == torch.bool:  # True = attend
                scores = scores.masked_fill(~attention_mask, float("-inf"))
                empty = ~attention_mask.any(dim=-1, keepdim=True)
            else:
                scores = scores + attention_mask.float()
                empty = torch.isneginf(scores).all(dim=-1, keepdim=True)
        probs = torch.softmax(scores, dim=-1)
        if empty is not None:
            probs = probs.masked_fill(empty, 0.0)
        probs = _MaskedScale.apply(probs, dropout)
        out = torch.matmul(probs, value.float())  # (B, H, Tq, D)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, sdpa_with_fast_dropout)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # the same masks as "sdpa"


# At import, so that a model switched to it and then pickled (a spawned process, torch.save) finds it again.
_register_attention()


def use_fast_dropout(model: nn.Module) -> int:
    """Turn every plain ``nn.Dropout`` of ``model`` into :class:`FastDropout`, in place; returns how many.

    The layers keep their object, ``p`` and place, so hooks, ``state_dict`` (dropout has none) and
    ``save_pretrained`` are unchanged; subclasses of ``nn.Dropout`` are left alone. The count includes layers a
    model holds but does not call (BERT's attention-probability dropout layer, whose ``p`` its attention function
    reads). An HF model with attention-probability dropout that runs ``sdpa`` attention through transformers'
    ``AttentionInterface`` (BERT, RoBERTa, DistilBERT, GPT-2, ...) is switched to :func:`sdpa_with_fast_dropout`,
    so that dropout takes the same masks; other attention, and attention without dropout, is left as it is.

    Example::
        n = use_fast_dropout(model)
    """
    from lit_llm.compat import hf_attention_implementation, hf_uses_attention_interface
    from lit_llm.hf import config_probability

    swapped = 0
    for module in model.modules():
        if type(module) is nn.Dropout:
            module.__class__ = FastDropout
            swapped += 1
    switch = (hf_attention_implementation(model) == "sdpa" and hf_uses_attention_interface(model)
              and config_probability(getattr(model, "config", None), "attention_dropout") > 0)
    if switch:
        model.set_attn_implementation(ATTENTION)  # type: ignore[operator]
    return swapped
