"""FLOPs of a transformer batch, the analytic way (Kaplan et al. 2020, PaLM appendix B), for MFU.

``transformer_flops`` counts the two terms that dominate a transformer:

- weights: every matmul weight ``W`` (``nn.Linear`` and GPT-2's ``Conv1D``, the LM head included, embedding
  lookups excluded) costs ``2 * |W|`` FLOPs per token forward (one multiply, one add);
- attention: per layer, ``Q @ K^T`` and ``P @ V`` each cost ``2 * T * d_attn`` per token forward, so
  ``4 * B * T^2 * d_attn`` per layer per batch.

Training (forward + backward) is 3x the forward, as the backward computes gradients of both the inputs and the
weights: ``6 * N * B * T + 12 * L * B * T^2 * d_attn``. Norms, softmax, activations and the optimizer are left
out (a few percent). Padding tokens count: the hardware does that work too.
Heads applied to one token per sequence (BERT's pooler, a classifier on [CLS]) are counted as if applied to
every token; they are one or two ``d x d`` matrices against ``12 * d^2`` per layer, so this overestimates by
under 1 / (12 * L).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from lit_llm.hf import config_size

__all__ = [
    "TransformerShape", "is_matmul_module", "matmul_params", "transformer_shape", "transformer_flops",
    "flops_per_batch",
]


@dataclass(frozen=True)
class TransformerShape:
    """What the FLOPs formula needs from a model.

    Args:
        matmul_params: number of weights used in matmuls once per token (``N`` in ``6 * N * tokens``).
        n_layers: number of attention layers.
        attention_dim: query heads x head dim (the width of ``Q @ K^T``), usually the hidden size.
    """

    matmul_params: int
    n_layers: int
    attention_dim: int


def matmul_params(model: nn.Module) -> int:
    """Weights of every ``nn.Linear`` and HF ``Conv1D`` in ``model``: embeddings are lookups, not matmuls.

    A tied LM head is counted although it shares its tensor with the embedding: it still does a
    ``(tokens, d) @ (d, vocab)`` matmul.

    Example::
        >>> matmul_params(nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 3)))
        12
    """
    total = 0
    for module in model.modules():
        if is_matmul_module(module):
            # Both hold a Parameter ``weight``; nn.Module.__getattr__ is typed ``Tensor | Module``.
            total += cast(torch.Tensor, module.weight).numel()
    return total


def is_matmul_module(module: nn.Module) -> bool:
    """``nn.Linear`` or HF's ``Conv1D`` (GPT-2's transposed Linear): a weight multiplied with every token.

    Conv1D is matched by name, so any copy of it (and no import) works.

    Example::
        >>> is_matmul_module(nn.Linear(2, 3)), is_matmul_module(nn.Embedding(2, 3))
        (True, False)
    """
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def transformer_shape(model: nn.Module) -> TransformerShape:
    """Read layers and attention width from an HF model's ``config``, count its matmul weights.

    Raises:
        ValueError: the model has no HF-style config giving its layer count and hidden size.

    Example::
        shape = transformer_shape(AutoModelForCausalLM.from_pretrained("gpt2"))
    """
    config = getattr(model, "config", None)
    n_layers = config_size(config, "num_layers")
    hidden = config_size(config, "hidden_size")
    if n_layers is None or hidden is None:
        raise ValueError(
            f"transformer FLOPs: {type(model).__name__} has no HF config with num_hidden_layers / n_layer and "
            "hidden_size / n_embd; pass an HF PreTrainedModel, or compute flops_per_batch yourself "
            "(lightning.fabric.utilities.throughput.measure_flops)."
        )
    heads = config_size(config, "num_heads")
    head_dim = config_size(config, "head_dim")
    # Models with an explicit head_dim (Gemma, some Qwen) have heads * head_dim != hidden_size.
    attention_dim = heads * head_dim if heads and head_dim else hidden
    return TransformerShape(matmul_params(model), n_layers, attention_dim)


def transformer_flops(shape: TransformerShape, batch_size: int, seq_len: int, *, training: bool = True) -> int:
    """FLOPs of one batch of ``batch_size`` sequences of ``seq_len`` tokens.

    Args:
        shape: from :func:`transformer_shape`.
        batch_size: sequences in the batch (B).
        seq_len: tokens per sequence, padding included (T).
        training: forward + backward (3x the forward) when True, forward only when False.

    Example::
        >>> transformer_flops(TransformerShape(1000, n_layers=2, attention_dim=8), batch_size=2, seq_len=4)
        54144
    """
    tokens = batch_size * seq_len
    weights = 2 * shape.matmul_params * tokens  # one multiply-add per weight per token
    attention = 4 * shape.n_layers * batch_size * seq_len**2 * shape.attention_dim  # QK^T and PV: (B, T, T) x d
    forward = weights + attention
    return 3 * forward if training else forward


def flops_per_batch(model: nn.Module, batch_size: int, seq_len: int, *, training: bool = True) -> int:
    """Shortcut for ``transformer_flops(transformer_shape(model), ...)``.

    Example::
        flops = flops_per_batch(model, batch_size=8, seq_len=128)  # forward + backward
        mfu = flops * steps_per_second / peak_flops
    """
    return transformer_flops(transformer_shape(model), batch_size, seq_len, training=training)
