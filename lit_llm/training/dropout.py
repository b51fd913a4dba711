"""Dropout that draws its masks at the CPU's integer speed: the same layer, a third of the cost.

torch's CPU dropout draws one float Bernoulli sample per element (``bernoulli_``, about 7 ns an element on the
2-core build machines) and then multiplies twice: in the main job's bf16 training step that was 46 ms of 317, 13%
of the step, more than anything but the matmuls (``benchmarks/step_profile.md``). Here each element's keep/drop
decision is read off 16 random bits (bf16 / fp16) or 31 (fp32) of torch's own generator (``random_`` on int32, two
elements per draw in 16-bit), and the scaled mask is built with integer operations in the input's dtype: the same
distribution, to within the drop probability's rounding to a multiple of 2**-15 (2**-31 in fp32), scaled by
``1 / (1 - p)`` in the input's dtype as torch does. It draws from torch's default generator, so
``seed_everything`` makes it reproducible; it is not the same random stream as torch's.

Only CPU tensors take this path. Elsewhere (CUDA has a fused dropout kernel), under ``torch.compile`` (inductor
generates its own) and for other dtypes, the layer is torch's ``nn.Dropout`` unchanged.

Example::
    model = AutoModelForSequenceClassification.from_pretrained(path)
    use_fast_dropout(model)  # every nn.Dropout of the model, in place; weights and state_dict unchanged
"""

from __future__ import annotations

import functools

import torch
from torch import nn

__all__ = ["FastDropout", "fast_dropout", "use_fast_dropout"]

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
    return 0.0 < p and round(p * 2**bits) < 2**bits  # p that rounds to 1 keeps nothing: torch's path


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
    """``nn.Dropout`` whose CPU forward is :func:`fast_dropout`; ``p`` and ``inplace`` keep their meaning.

    Example::
        layer = FastDropout(0.1)
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or not _usable(input, self.p):
            return super().forward(input)
        return _MaskedScale.apply(input, self.p)


def use_fast_dropout(model: nn.Module) -> int:
    """Turn every plain ``nn.Dropout`` of ``model`` into :class:`FastDropout`, in place; returns how many.

    The layers keep their object, ``p`` and place, so hooks, ``state_dict`` (dropout has none) and
    ``save_pretrained`` are unchanged; subclasses of ``nn.Dropout`` are left alone. Attention-probability dropout
    that a model does inside ``scaled_dot_product_attention`` is not a layer call and keeps torch's kernel.

    Example::
        n = use_fast_dropout(model)
    """
    swapped = 0
    for module in model.modules():
        if type(module) is nn.Dropout:
            module.__class__ = FastDropout
            swapped += 1
    return swapped
