"""8-bit quantization of Linear layers: ONNX Runtime dynamic int8, bitsandbytes LLM.int8, int8 fake-quant for QAT.

The functional core of :class:`lit_llm.callbacks.Int8Quantization`.

- ``onnxruntime``: the float model is exported to ONNX and its Linear MatMuls are quantized with
  ``onnxruntime.quantization.quantize_dynamic`` (int8 weights with a scale per output row, activations quantized
  per batch); the int8 model is an :class:`~lit_llm.compression.quantized_artifacts.OnnxRuntimeModel` over that session,
  the same file a server loads (see :mod:`lit_llm.compression.quantized_artifacts`). The CPU int8 backend: it replaces
  ``torch.ao.quantization`` (deprecated by PyTorch, slated for removal).
- ``bitsandbytes``: swaps Linear for ``bnb.nn.Linear8bitLt`` in place (LLM.int8, Dettmers et al. 2022: int8
  weights, outlier features above ``threshold`` in 16/32 bit). Runs on CUDA and, with bitsandbytes >= 0.45, on CPU.
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
    "quantizable_linear_names",
    "quantize_int8",
    "remove_fake_quant",
]

# onnxruntime is the default: on CPU its int8 ran 2-3x faster than torch fp32 and ~1.7x faster than ORT fp32, while
# bf16 without native CPU support ran 3-5x slower than fp32 (benchmarks/int8_backends.md).
Backend = Literal["onnxruntime", "bitsandbytes"]
BACKENDS: tuple[str, ...] = ("onnxruntime", "bitsandbytes")

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


def import_onnxruntime() -> Any:
    """``onnxruntime`` (with ``onnx``, which its quantizer needs), or an ImportError with the install command."""
    try:
        importlib.import_module("onnx")
        return importlib.import_module("onnxruntime")
    except ImportError as err:
        raise ImportError(
            "int8 for CPU (backend='onnxruntime') needs onnxruntime and onnx: pip install 'lit-llm[onnx]' "
            f"(or pip install onnx onnxruntime); import failed with: {err}"
        ) from err


def check_backend(backend: str, device: torch.device | str) -> None:
    """Raise a clear error when ``backend`` cannot run on ``device``.

    ``onnxruntime`` runs on the CPU whatever the trainer's device (inputs are moved there and the logits back):
    it is what the CPU artifact runs.

    Raises:
        ValueError: an unknown backend (``torch`` names its replacement).
        ImportError: onnxruntime / bitsandbytes is not installed (with the install command).

    Example::
        check_backend("onnxruntime", "cpu")
    """
    device = torch.device(device)
    if backend == "onnxruntime":
        import_onnxruntime()
    elif backend == "bitsandbytes":
        _import_bitsandbytes()
        if device.type not in ("cpu", "cuda", "xpu"):
            raise ValueError(
                f"Int8Quantization(backend='bitsandbytes') has no kernels for device {device.type!r}; "
                "use cpu or cuda, or backend='onnxruntime' for CPU int8."
            )
    elif backend == "torch":
        raise ValueError(
            "Int8Quantization(backend='torch') was removed with torch.ao.quantization (deprecated by PyTorch): "
            "use backend='onnxruntime' for int8 on CPU, or 'bitsandbytes' on CUDA."
        )
    else:
        raise ValueError(f"Int8Quantization(backend={backend!r}): choose 'onnxruntime' or 'bitsandbytes'.")


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


def quantizable_linear_names(model: nn.Module, skip: Iterable[str] = DEFAULT_SKIP) -> list[str]:
    """Names of the Linear layers int8 would convert (every ``nn.Linear`` not matching ``skip``).

    Raises:
        ValueError: there is none, so an int8 model would be the float one under another name.

    Example::
        quantizable_linear_names(model)  # ['bert.encoder.layer.0.attention.self.query', ...]
    """
    skip = list(skip)
    names = [name for name, _ in _linears(model, skip)]
    if not names:
        total = sum(1 for m in model.modules() if type(m) is nn.Linear)
        why = (
            f"all {total} of its Linear layers match skip={skip!r}; narrow skip"
            if total
            else "it has no nn.Linear layer (int8 here quantizes Linear weights only)"
        )
        if any(type(m).__name__ == "Conv1D" for m in model.modules()):
            why += "; its transformers Conv1D layers (GPT-2 style) are not quantized by lit-llm's int8"
        raise ValueError(f"cannot quantize {type(model).__name__} to int8: {why}.")
    return names


def quantize_int8(model: nn.Module, backend: Backend = "onnxruntime", skip: Iterable[str] = DEFAULT_SKIP) -> nn.Module:
    """The int8 version of ``model`` (put in eval mode).

    ``onnxruntime``: an :class:`~lit_llm.compression.quantized_artifacts.OnnxRuntimeModel` over a session quantized from
    ``model`` (left unchanged), taking the same keyword inputs and returning ``.logits`` (and ``.loss`` with
    ``labels``; ``int8_layers`` counts the int8 MatMuls). ``bitsandbytes``: ``model`` itself, its Linear layers
    swapped in place (:func:`quantize_bitsandbytes` returns how many).

    Raises:
        ValueError / ImportError: see :func:`check_backend` and :func:`quantizable_linear_names`.

    Example::
        int8_model = quantize_int8(model, "onnxruntime")
        logits = int8_model(input_ids=ids, attention_mask=mask).logits
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    check_backend(backend, device)
    quantizable_linear_names(model, skip)
    model.eval()
    if backend == "onnxruntime":
        from lit_llm.compression.quantized_artifacts import onnx_int8_model

        return onnx_int8_model(model, skip)
    quantize_bitsandbytes(model, skip)
    return model


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
        int8_model = quantize_int8(model, "onnxruntime")
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
