"""Compression as plain functions, shared by the compression callbacks and usable in any training loop.

``pruning`` (magnitude masks, structured heads / FFN units), ``quantization`` (fake-quant for QAT, int8 and
bitsandbytes conversion), ``low_rank`` (SVD factorization), ``distillation`` (losses, targets, students),
``compressed_models`` and ``quantized_artifacts`` (the artifacts that ship, and their loaders), ``report``
(parameters, size and latency of a model).

The loaders a deployment needs are re-exported here::

    from lit_llm.compression import load_int8_onnx, load_low_rank, load_pruned
"""

from lit_llm.compression.compressed_models import load_low_rank, load_pruned, save_low_rank, save_pruned
from lit_llm.compression.distillation import mark_distillation_targets, student_from_teacher
from lit_llm.compression.quantized_artifacts import (
    cpu_flags,
    export_bf16,
    export_bitsandbytes,
    export_int8_onnx,
    load_int8_onnx,
)

__all__ = [
    "cpu_flags",
    "export_bf16",
    "export_bitsandbytes",
    "export_int8_onnx",
    "load_int8_onnx",
    "load_low_rank",
    "load_pruned",
    "mark_distillation_targets",
    "save_low_rank",
    "save_pruned",
    "student_from_teacher",
]
