"""The compression report: parameters, non-zero parameters, size on disk, CPU latency, the task metric.

Every compression callback adds a section to ``<run dir>/compression_report.json`` (and re-renders
``compression_report.md`` next to it) and logs its numbers to the trainer's loggers (W&B included) as
``compression/<section>/<metric>``. The measuring functions work on any ``nn.Module`` and are what
``scripts/bench_compression.py`` uses too, so the benchmark and a training run report the same quantities.
"""

from __future__ import annotations

import io
import json
import statistics
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "INPUT_KEYS",
    "count_parameters",
    "example_inputs",
    "latency_ms",
    "measure",
    "serialized_size_bytes",
    "update_report",
]

REPORT_JSON = "compression_report.json"
REPORT_MD = "compression_report.md"
_COLUMN_ORDER = ("parameters", "nonzero_parameters", "size_mb", "latency_ms_bs1", "latency_ms_bs32")
INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def _weight_tensors(model: nn.Module) -> Iterator[torch.Tensor]:
    seen: set[int] = set()
    for param in model.parameters():
        if id(param) not in seen:
            seen.add(id(param))
            yield param.detach()
    for module in model.modules():
        # torch's dynamic int8 Linear keeps its weight packed, outside .parameters().
        packed = getattr(module, "_packed_params", None)
        if packed is not None and hasattr(module, "weight") and callable(module.weight):
            yield module.weight()
            bias = module.bias()
            if bias is not None:
                yield bias


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(parameters, non-zero parameters)``, counting exact zeros; int8 weights (packed or bitsandbytes) too.

    Example::
        total, nonzero = count_parameters(model)
    """
    total = nonzero = 0
    for t in _weight_tensors(model):
        if t.is_quantized:
            t = t.int_repr().float() - t.q_zero_point() if t.qscheme() == torch.per_tensor_affine else t.int_repr()
        total += t.numel()
        nonzero += int(torch.count_nonzero(t))
    return total, nonzero


def serialized_size_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: what the weights take on disk, whatever their dtype."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def example_inputs(batch: Mapping[str, Any], batch_size: int) -> dict[str, torch.Tensor]:
    """A model input of ``batch_size`` rows made from a dataloader batch (rows repeated as needed), labels dropped."""
    out = {}
    for key in INPUT_KEYS:
        value = batch.get(key)
        if isinstance(value, torch.Tensor):
            reps = -(-batch_size // value.shape[0])  # ceil
            out[key] = value.repeat(reps, *([1] * (value.dim() - 1)))[:batch_size]
    if "input_ids" not in out:
        raise ValueError(
            f"compression report: the batch has no 'input_ids' tensor (keys: {sorted(batch)}); latency needs a "
            "dict batch of tokenized text like our datamodules produce."
        )
    return out


@torch.inference_mode()
def latency_ms(model: nn.Module, inputs: Mapping[str, torch.Tensor], repeats: int = 5, warmup: int = 2) -> float:
    """Median wall time of one forward pass in milliseconds (eval mode, no grad, on the inputs' device).

    Example::
        ms = latency_ms(model, example_inputs(batch, 32))
    """
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    inputs = {k: v.to(device) for k, v in inputs.items()}
    for _ in range(warmup):
        model(**inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(**inputs)
        times.append((time.perf_counter() - start) * 1000.0)
    model.train(was_training)
    return statistics.median(times)


def measure(
    model: nn.Module,
    batch: Mapping[str, Any] | None = None,
    batch_sizes: tuple[int, ...] = (1, 32),
    metrics: Mapping[str, float] | None = None,
    repeats: int = 5,
) -> dict[str, Any]:
    """Parameters, non-zero parameters, size on disk, latency per batch size (if ``batch`` given) and metrics.

    Args:
        model: the model to measure (an HF model, or any module taking ``input_ids=...`` keywords).
        batch: a dataloader batch used to build latency inputs; None skips latency.
        batch_sizes: batch sizes to time.
        metrics: task metrics to record alongside (e.g. ``{"test/accuracy": 0.81}``).
        repeats: timed forward passes per batch size (the median is reported).

    Example::
        stats = measure(model, batch, metrics={"val/accuracy": 0.8})
    """
    total, nonzero = count_parameters(model)
    stats: dict[str, Any] = {
        "parameters": total,
        "nonzero_parameters": nonzero,
        "size_mb": round(serialized_size_bytes(model) / 2**20, 3),
    }
    if batch is not None:
        for bs in batch_sizes:
            stats[f"latency_ms_bs{bs}"] = round(latency_ms(model, example_inputs(batch, bs), repeats=repeats), 3)
    for key, value in (metrics or {}).items():
        stats[key] = float(value)
    return stats


def update_report(run_dir: str | Path, section: str, data: Mapping[str, Any], trainer: Any = None) -> Path:
    """Merge ``data`` into section ``section`` of the run's report (JSON + markdown) and log it.

    Args:
        run_dir: the run directory (``trainer.default_root_dir``).
        section: e.g. ``pruning``, ``int8_before``, ``int8_after``.
        data: flat mapping of numbers / strings.
        trainer: when given (rank zero), numeric values go to every logger as ``compression/<section>/<key>``.

    Returns:
        The JSON path.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / REPORT_JSON
    report: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"sections": {}}
    report["sections"].setdefault(section, {}).update(dict(data))
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    (run_dir / REPORT_MD).write_text(render_markdown(report["sections"]))
    if trainer is not None:
        numbers = {
            f"compression/{section}/{k}".replace("/test/", "/test_").replace("/val/", "/val_"): float(v)
            for k, v in data.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        for logger in getattr(trainer, "loggers", []):
            logger.log_metrics(numbers, step=trainer.global_step)
    return path


def render_markdown(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """One table: a row per section, a column per quantity seen in any section."""
    seen = {k for data in sections.values() for k in data}
    first = [c for c in _COLUMN_ORDER if c in seen]
    columns = first + sorted(seen - set(first))
    lines = ["# Compression report", "", "| section | " + " | ".join(columns) + " |"]
    lines.append("|---" * (len(columns) + 1) + "|")
    for name, data in sections.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(data.get(c, "")) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def spread_batches(loader: Any, count: int) -> Iterator[Any]:
    """Up to ``count`` batches of ``loader`` spread evenly over it (first, last and between), in order.

    Evaluation batches may be sorted by length (``sort_eval_by_length``): the first ones then hold the shortest
    examples, so a measurement on them alone would understate latency and see only short texts.
    """
    if count < 1:
        return
    try:
        n = len(loader)
    except TypeError:  # an iterable without a length: its first batches
        n = count
    picks = {round(k * (n - 1) / (count - 1)) for k in range(count)} if count > 1 else {(n - 1) // 2}
    last = max(picks)
    for i, batch in enumerate(loader):
        if i > last:
            return
        if i in picks:
            yield batch


def first_batch(trainer: Any) -> Mapping[str, Any] | None:
    """A batch from the middle of the test, validation or train dataloader (whichever exists), for latency
    inputs: of a typical length also when evaluation batches are sorted by length."""
    for attr in ("test_dataloaders", "val_dataloaders", "train_dataloader"):
        loaders = getattr(trainer, attr, None)
        if loaders is None:
            continue
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        try:
            batch = next(spread_batches(loader, 1))
        except (StopIteration, TypeError):
            continue
        if isinstance(batch, Mapping):
            return batch
    return None


def task_model(pl_module: nn.Module) -> nn.Module:
    """The HF model inside a LightningModule (``.model``, our modules' contract), else the module itself."""
    inner = getattr(pl_module, "model", None)
    return inner if isinstance(inner, nn.Module) else pl_module
