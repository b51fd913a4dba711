"""The parameter tensors of a model, read from the model itself built on the meta device.

``AutoModelFor<task>.from_config(config)`` under ``torch.device("meta")`` makes every tensor with its shape and
no storage, so any architecture ``transformers`` knows is counted exactly, tied weights once. Per-tensor sizes
(not only a total) matter: bitsandbytes keeps 32-bit optimizer state for tensors under 4096 elements, FSDP
gathers one block at a time, the FLOP count needs the matmul weights apart from the embeddings, and LoRA
adapts the matmul weights of the blocks (its adapter sizes follow from their shapes).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any, Literal

from lit_llm.planning.presets import ModelDims

__all__ = [
    "Task", "TASKS", "ParamTensor", "parameter_tensors", "count_parameters", "matmul_parameters",
    "lora_parameters", "lora_targets",
]

Task = Literal["mlm", "clm", "classification"]
TASKS: tuple[str, ...] = ("mlm", "clm", "classification")
_AUTO_CLASSES = {
    "mlm": "AutoModelForMaskedLM",
    "clm": "AutoModelForCausalLM",
    "classification": "AutoModelForSequenceClassification",
}


@dataclass(frozen=True)
class ParamTensor:
    """One trainable tensor of the model.

    Args:
        name: its name in ``model.named_parameters()``.
        numel: element count.
        layer: the transformer block it belongs to (-1: outside the blocks).
        matmul: a weight of a Linear / Conv1D (6 FLOPs per token per element in training), a tied LM head's
            embedding included.
        shape: ``(n_in, n_out)`` for matmul weights (GPT-2's Conv1D is stored transposed), else the tensor's shape.
        head: a task head's tensor (outside the base model: classifier, LM head), trained even under LoRA.
    """

    name: str
    numel: int
    layer: int = -1
    matmul: bool = False
    shape: tuple[int, ...] = ()
    head: bool = False


def _check_task(dims: ModelDims, task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task {task!r}: choose one of {', '.join(TASKS)}.")
    if task == "mlm" and dims.arch != "bert":
        raise ValueError(
            f"task 'mlm' needs an encoder (bert/roberta), but {dims.name!r} is a {dims.arch} decoder; use --task clm."
        )


@functools.lru_cache(maxsize=32)
def _meta_tensors(config_json: str, task: str, num_labels: int) -> tuple[ParamTensor, ...]:
    import torch
    import transformers

    from lit_llm.hf import find_blocks
    from lit_llm.training.flops import is_matmul_module
    from lit_llm.hf import build_config

    spec = json.loads(config_json)
    overrides: dict[str, Any] = {"num_labels": num_labels} if task == "classification" else {}
    config = build_config(spec, **overrides)
    auto = getattr(transformers, _AUTO_CLASSES[task])
    try:
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            model = auto.from_config(config)
    except ValueError as err:
        raise ValueError(
            f"model_type {spec.get('model_type')!r} has no {_AUTO_CLASSES[task]} in transformers "
            f"{transformers.__version__} ({err}); choose another --task."
        ) from None
    blocks_name, blocks = find_blocks(model)
    matmul = {id(m.weight): type(m).__name__ == "Conv1D" for m in model.modules() if is_matmul_module(m)}
    base = getattr(model, "base_model_prefix", "")
    out = []
    for name, param in model.named_parameters():  # tied tensors once
        layer = -1
        if name.startswith(blocks_name + "."):
            layer = int(name[len(blocks_name) + 1:].split(".", 1)[0])
        shape = tuple(param.shape)
        if id(param) in matmul and len(shape) == 2:
            shape = shape if matmul[id(param)] else (shape[1], shape[0])  # Linear stores (out, in)
        out.append(ParamTensor(name, param.numel(), layer, id(param) in matmul, shape,
                               head=bool(base) and not name.startswith(base + ".")))
    return tuple(out)


def parameter_tensors(dims: ModelDims, task: Task, num_labels: int = 2) -> list[ParamTensor]:
    """Every trainable tensor of ``AutoModelFor<task>`` built from the model's config on the meta device.

    mlm is ``AutoModelForMaskedLM`` (BERT's decoder tied to the word embeddings), clm ``AutoModelForCausalLM``,
    classification ``AutoModelForSequenceClassification`` with ``num_labels``. Presets and explicit dimensions
    go through the config :meth:`~lit_llm.planning.presets.ModelDims.hf_config_dict` writes for them.

    Raises:
        ValueError: mlm on a decoder, an unknown task, or a model type without that task's Auto class.

    Example::
        count_parameters(MODEL_PRESETS["bert-base"], "mlm")  # 109,514,298 like BertForMaskedLM
    """
    _check_task(dims, task)
    return list(_meta_tensors(_config_key(dims), task, num_labels))


@functools.lru_cache(maxsize=64)
def _config_key(dims: ModelDims) -> str:
    return json.dumps(dims.hf_config_dict(), sort_keys=True)


def count_parameters(dims: ModelDims, task: Task, num_labels: int = 2) -> int:
    """The number of trainable parameters (tied weights counted once)."""
    return sum(t.numel for t in parameter_tensors(dims, task, num_labels))


def matmul_parameters(dims: ModelDims, task: Task, num_labels: int = 2) -> int:
    """Parameters that take part in a matmul per token, the ``N`` of the ``6N`` FLOPs rule.

    The LM head multiplies by the (tied) vocabulary matrix, so ``V*h`` counts for mlm/clm even when it is the
    word embedding; embedding lookups alone are free.
    """
    return sum(t.numel for t in parameter_tensors(dims, task, num_labels) if t.matmul)


def lora_targets(tensors: list[ParamTensor]) -> list[ParamTensor]:
    """The weights LoRA adapts: every matmul weight inside the transformer blocks (QLoRA's choice)."""
    return [t for t in tensors if t.matmul and t.layer >= 0]


def lora_parameters(dims: ModelDims, task: Task, rank: int, num_labels: int = 2) -> int:
    """Trainable parameters under LoRA of ``rank``: ``r * (n_in + n_out)`` per adapted weight, plus the task head
    for classification (trained in full, as peft's ``modules_to_save`` does for a classifier).

    Example::
        lora_parameters(MODEL_PRESETS["llama-7b"], "clm", rank=8)  # 19,988,480: 0.3% of 6.7B
    """
    tensors = parameter_tensors(dims, task, num_labels)
    adapters = sum(rank * sum(t.shape) for t in lora_targets(tensors))
    head = sum(t.numel for t in tensors if t.head) if task == "classification" else 0
    return adapters + head
