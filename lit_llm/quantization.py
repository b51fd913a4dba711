"""8-bit quantization of Linear layers: bitsandbytes LLM.int8, torch dynamic int8, and int8 fake-quant for QAT.

The functional core of :class:`lit_llm.callbacks.Int8Quantization`.

- ``bitsandbytes``: swaps Linear for ``bnb.nn.Linear8bitLt`` (LLM.int8, Dettmers et al. 2022: int8 weights,
  outlier features above ``threshold`` in 16/32 bit). Runs on CUDA and, with bitsandbytes >= 0.45, on CPU.
  Halves-to-quarters memory; speed depends on the kernels of the device.
- ``torch``: ``torch.ao.quantization.quantize_dynamic`` (int8 weights with a scale per output row,
  activations quantized per batch).
  CPU only (fbgemm / qnnpack); the fast one for CPU inference.
- QAT: :class:`FakeQuantLinear` rounds weights (per output channel) and inputs (per tensor) to the int8 grid in
  the forward pass with a straight-through gradient, so fine-tuning learns weights that survive quantization.
  It shares the original ``weight`` / ``bias`` Parameters, so optimizer state and ``state_dict`` keys are
  unchanged and :func:`remove_fake_quant` restores plain Linear layers.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import nn

__all__ = [
    "Backend",
    "DEFAULT_SKIP",
    "FakeQuantLinear",
    "add_fake_quant",
    "check_backend",
    "quantize_bitsandbytes",
    "quantize_int8",
    "quantize_torch_dynamic",
    "remove_fake_quant",
]

Backend = Literal["bitsandbytes", "torch"]

# Task heads and the MLM decoder: small, and where the int8 error costs the most accuracy.
DEFAULT_SKIP: tuple[str, ...] = (r"classifier", r"(^|\.)score$", r"lm_head", r"cls\.predictions", r"qa_outputs")


def _import_bitsandbytes() -> Any:
    try:
        return importlib.import_module("bitsandbytes")
    except ImportError as err:
        raise ImportError(
            "Int8Quantization(backend='bitsandbytes') needs bitsandbytes: pip install 'bitsandbytes>=0.45' "
            "(CPU support needs >= 0.45), or use backend='torch' on CPU."
        ) from err


def check_backend(backend: str, device: torch.device | str) -> None:
    """Raise a clear error when ``backend`` cannot run on ``device``.

    Raises:
        ValueError: an unknown backend, or ``torch`` on a non-CPU device (dynamic int8 kernels are CPU-only).
        ImportError: bitsandbytes is not installed (with the install command).
    """
    device = torch.device(device)
    if backend == "torch":
        if device.type != "cpu":
            raise ValueError(
                f"Int8Quantization(backend='torch') runs on CPU only (torch dynamic int8 has no {device.type} "
                "kernels); use backend='bitsandbytes' on CUDA, or test on CPU (Trainer(accelerator='cpu'))."
            )
        if "fbgemm" not in torch.backends.quantized.supported_engines and "qnnpack" not in (
            torch.backends.quantized.supported_engines
        ):
            raise ValueError("Int8Quantization(backend='torch'): this torch build has no fbgemm/qnnpack engine.")
    elif backend == "bitsandbytes":
        _import_bitsandbytes()
        if device.type not in ("cpu", "cuda", "xpu"):
            raise ValueError(
                f"Int8Quantization(backend='bitsandbytes') has no kernels for device {device.type!r}; "
                "use cpu or cuda, or backend='torch' on CPU."
            )
    else:
        raise ValueError(f"Int8Quantization(backend={backend!r}): choose 'bitsandbytes' or 'torch'.")


def _skipped(name: str, skip: Iterable[str]) -> bool:
    return any(re.search(p, name) for p in skip)


def _linears(model: nn.Module, skip: Iterable[str]) -> list[tuple[str, nn.Linear]]:
    skip = list(skip)
    return [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear and not _skipped(n, skip)]


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


@torch.no_grad()
def quantize_bitsandbytes(model: nn.Module, skip: Iterable[str] = DEFAULT_SKIP, threshold: float = 6.0) -> int:
    """Replace each Linear (not matching ``skip``) by ``bnb.nn.Linear8bitLt`` in place; returns how many.

    The weights are quantized to int8 when the new layer is moved to the model's device.

    Example::
        quantize_bitsandbytes(model)  # model now holds Int8Params
    """
    bnb = _import_bitsandbytes()
    count = 0
    for name, linear in _linears(model, skip):
        device = linear.weight.device
        new = bnb.nn.Linear8bitLt(
            linear.in_features, linear.out_features, bias=linear.bias is not None,
            has_fp16_weights=False, threshold=threshold,
        )
        new.load_state_dict(linear.state_dict())
        _set(model, name, new.to(device))  # .to() quantizes the weight
        count += 1
    return count


def quantize_torch_dynamic(model: nn.Module, skip: Iterable[str] = DEFAULT_SKIP) -> int:
    """Replace each Linear (not matching ``skip``) by torch's dynamic int8 Linear in place (CPU); returns how many.

    Example::
        quantize_torch_dynamic(model.eval())
    """
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    count = 0
    for name, linear in _linears(model, skip):
        # quantize_dynamic on a one-layer wrapper converts just this layer and leaves the rest untouched.
        # One weight scale per output row, as FakeQuantLinear trains for: on fine-tuned all-MiniLM-L6-v2 it lost
        # 0.9 points of accuracy where per-tensor scales lost 1.4, at the same speed.
        wrapper = nn.Sequential(linear)
        quantize_dynamic(wrapper, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
        _set(model, name, wrapper[0])
        count += 1
    return count


def quantize_int8(model: nn.Module, backend: Backend, skip: Iterable[str] = DEFAULT_SKIP) -> int:
    """Quantize ``model``'s Linear layers in place with ``backend``; returns the number of layers converted.

    Raises:
        ValueError / ImportError: see :func:`check_backend`.

    Example::
        quantize_int8(model.eval(), "torch")
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    check_backend(backend, device)
    model.eval()
    if backend == "torch":
        return quantize_torch_dynamic(model, skip)
    return quantize_bitsandbytes(model, skip)


def _fake_quant_int8(x: torch.Tensor, dim: int | None) -> torch.Tensor:
    # Symmetric int8: scale = max|x| / 127 per channel (dim) or per tensor; round in the forward pass,
    # identity gradient in the backward pass (straight-through estimator).
    amax = x.detach().abs().amax(dim=dim, keepdim=True) if dim is not None else x.detach().abs().max()
    scale = amax.clamp(min=1e-8) / 127.0
    q = torch.clamp(torch.round(x / scale), -127, 127) * scale
    return x + (q - x).detach()


class FakeQuantLinear(nn.Linear):
    """A Linear that computes with int8-rounded weights (per output row) and inputs (per tensor).

    Shares the Parameters of the Linear it replaces (see :func:`add_fake_quant`).
    """

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> FakeQuantLinear:
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight = linear.weight
        new.bias = linear.bias
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = _fake_quant_int8(self.weight, dim=1)  # (out, in), one scale per output row
        return nn.functional.linear(_fake_quant_int8(x, dim=None), w, self.bias)


def add_fake_quant(model: nn.Module, skip: Iterable[str] = DEFAULT_SKIP) -> int:
    """Swap Linear layers for :class:`FakeQuantLinear` (same Parameters, same state_dict keys); returns how many.

    Example::
        add_fake_quant(model)   # fine-tune a little
        remove_fake_quant(model)
        quantize_int8(model, "torch")
    """
    count = 0
    for name, linear in _linears(model, skip):
        _set(model, name, FakeQuantLinear.from_linear(linear))
        count += 1
    return count


def remove_fake_quant(model: nn.Module) -> int:
    """Turn every :class:`FakeQuantLinear` back into a plain ``nn.Linear`` sharing its Parameters."""
    count = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, FakeQuantLinear):
            plain = nn.Linear.__new__(nn.Linear)
            nn.Module.__init__(plain)
            plain.in_features, plain.out_features = module.in_features, module.out_features
            plain.weight, plain.bias = module.weight, module.bias
            _set(model, name, plain)
            count += 1
    return count
