"""The parameter tensors of a model, counted from its dimensions the way ``transformers`` lays them out.

Per-tensor sizes (not only a total) matter: bitsandbytes keeps 32-bit optimizer state for tensors under 4096
elements, FSDP gathers one block at a time, and the FLOP count needs the matmul parameters apart from the
embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lit_llm.planning.presets import ModelDims

__all__ = ["Task", "TASKS", "ParamTensor", "parameter_tensors", "count_parameters", "matmul_parameters"]

Task = Literal["mlm", "clm", "classification"]
TASKS: tuple[str, ...] = ("mlm", "clm", "classification")


@dataclass(frozen=True)
class ParamTensor:
    """One trainable tensor: its name, element count, the block it belongs to (-1: outside the blocks)."""

    name: str
    numel: int
    layer: int = -1
    matmul: bool = False  # a weight used in a matmul (counts 6 FLOPs per token per element in training)


def _block(dims: ModelDims, i: int) -> list[ParamTensor]:
    h, f, kv = dims.hidden, dims.ffn, dims.kv_dim

    def lin(name: str, n_in: int, n_out: int, bias: bool = True) -> list[ParamTensor]:
        out = [ParamTensor(f"{i}.{name}.weight", n_in * n_out, i, True)]
        return out + ([ParamTensor(f"{i}.{name}.bias", n_out, i)] if bias else [])

    def norm(name: str, bias: bool = True) -> list[ParamTensor]:
        out = [ParamTensor(f"{i}.{name}.weight", h, i)]
        return out + ([ParamTensor(f"{i}.{name}.bias", h, i)] if bias else [])

    if dims.arch == "bert":
        return (
            lin("query", h, h) + lin("key", h, h) + lin("value", h, h) + lin("attn_out", h, h) + norm("ln1")
            + lin("fc1", h, f) + lin("fc2", f, h) + norm("ln2")
        )
    if dims.arch == "gpt2":
        return norm("ln_1") + lin("c_attn", h, 3 * h) + lin("c_proj", h, h) + norm("ln_2") + lin(
            "c_fc", h, f
        ) + lin("mlp_proj", f, h)
    # llama: no biases, RMSNorm has a weight only
    return (
        norm("input_norm", bias=False) + lin("q", h, h, False) + lin("k", h, kv, False) + lin("v", h, kv, False)
        + lin("o", h, h, False) + norm("post_norm", bias=False) + lin("gate", h, f, False) + lin("up", h, f, False)
        + lin("down", f, h, False)
    )


def parameter_tensors(dims: ModelDims, task: Task, num_labels: int = 2) -> list[ParamTensor]:
    """Every trainable tensor of ``AutoModelFor<task>`` built from ``dims``.

    mlm is ``BertForMaskedLM`` (decoder tied to the word embeddings, its bias kept), clm is
    ``GPT2LMHeadModel`` (tied head) or ``LlamaForCausalLM`` (untied head), classification adds BERT's pooler or
    a bias-free score layer for decoders.

    Raises:
        ValueError: mlm on a decoder, or an unknown task.

    Example::
        count_parameters(MODEL_PRESETS["bert-base"], "mlm")  # 109,514,298 like BertForMaskedLM
    """
    if task not in TASKS:
        raise ValueError(f"task {task!r}: choose one of {', '.join(TASKS)}.")
    if task == "mlm" and dims.arch != "bert":
        raise ValueError(
            f"task 'mlm' needs an encoder (bert/roberta), but {dims.name!r} is a {dims.arch} decoder; use --task clm."
        )
    h, v = dims.hidden, dims.vocab
    out = [ParamTensor("embed.word", v * h)]
    if dims.arch == "bert":
        out += [
            ParamTensor("embed.position", dims.max_positions * h),
            ParamTensor("embed.token_type", 2 * h),
            ParamTensor("embed.ln.weight", h),
            ParamTensor("embed.ln.bias", h),
        ]
    elif dims.arch == "gpt2":
        out.append(ParamTensor("embed.position", dims.max_positions * h))
    for i in range(dims.num_layers):
        out += _block(dims, i)
    if dims.arch == "gpt2":
        out += [ParamTensor("ln_f.weight", h), ParamTensor("ln_f.bias", h)]
    elif dims.arch == "llama":
        out.append(ParamTensor("norm.weight", h))

    if task == "mlm":
        out += [
            ParamTensor("head.transform.weight", h * h, matmul=True),
            ParamTensor("head.transform.bias", h),
            ParamTensor("head.ln.weight", h),
            ParamTensor("head.ln.bias", h),
            ParamTensor("head.decoder.bias", v),
        ]
    elif task == "clm" and dims.arch == "llama":
        out.append(ParamTensor("lm_head.weight", v * h, matmul=True))
    elif task == "classification":
        if dims.arch == "bert":
            out += [ParamTensor("pooler.weight", h * h, matmul=True), ParamTensor("pooler.bias", h)]
            out += [ParamTensor("classifier.weight", h * num_labels, matmul=True),
                    ParamTensor("classifier.bias", num_labels)]
        else:
            out.append(ParamTensor("score.weight", h * num_labels, matmul=True))
    return out


def count_parameters(dims: ModelDims, task: Task, num_labels: int = 2) -> int:
    """The number of trainable parameters (tied weights counted once)."""
    return sum(t.numel for t in parameter_tensors(dims, task, num_labels))


def matmul_parameters(dims: ModelDims, task: Task, num_labels: int = 2) -> int:
    """Parameters that take part in a matmul per token, the ``N`` of the ``6N`` FLOPs rule.

    The LM head multiplies by the (tied) vocabulary matrix, so ``V*h`` counts for mlm/clm even when it is the
    word embedding; embedding lookups are free.
    """
    n = sum(t.numel for t in parameter_tensors(dims, task, num_labels) if t.matmul)
    if task in ("mlm", "clm") and dims.arch != "llama":
        n += dims.vocab * dims.hidden  # tied decoder: counted once as a parameter, but used as a matmul
    return n
