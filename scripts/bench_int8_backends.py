"""CPU serving latency of one small BERT classifier: ORT int8 vs ORT fp32 vs torch fp32 vs torch bf16.

Random weights (speed does not depend on them); the float model is the reference for the agreement columns.
Every variant runs one forward per round, rounds interleaved so machine noise hits all alike; the median is
reported. One thread (``torch.set_num_threads(1)``, ORT ``intra_op_num_threads=1``) so the numbers compare
kernels, not thread scaling. Writes ``benchmarks/int8_backends.{json,md}``.

Usage::
    OMP_NUM_THREADS=1 python scripts/bench_int8_backends.py            # ~3 minutes on an idle core (AVX2)
    OMP_NUM_THREADS=1 python scripts/bench_int8_backends.py --rounds 1 --out /tmp/bench   # quicker look

Without native bf16 (``avx512_bf16`` / ``amx_bf16``) the two bf16 variants take most of the time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

from lit_llm.commands.export import export_onnx
from lit_llm.compression.quantized_artifacts import INT8_ONNX_FILE, OnnxRuntimeModel, _quantize_onnx, cpu_flags
from lit_llm.compression.quantization import DEFAULT_SKIP

ROOT = Path(__file__).resolve().parents[1]


def build_model() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
        max_position_embeddings=512, num_labels=2,
    )
    return BertForSequenceClassification(config).eval()


def variants(model: BertForSequenceClassification, tmp: Path) -> dict[str, Callable[[dict], torch.Tensor]]:
    export_onnx(model, tmp / "model.onnx")
    model.eval()  # the exporter hands the model back in train mode (dropout on)
    out: dict[str, Callable[[dict], torch.Tensor]] = {}
    out["ort fp32"] = _logits_of(OnnxRuntimeModel(tmp / "model.onnx", num_threads=1))
    for weight_type in ("qint8", "quint8"):
        path = tmp / f"{weight_type}-{INT8_ONNX_FILE}"
        _quantize_onnx(model, path, DEFAULT_SKIP, weight_type)  # type: ignore[arg-type]
        out[f"ort int8 ({weight_type} weights)"] = _logits_of(OnnxRuntimeModel(path, num_threads=1))
    bf16 = BertForSequenceClassification(model.config).eval()
    bf16.load_state_dict(model.state_dict())
    bf16 = bf16.to(torch.bfloat16)

    def torch_fp32(inputs: dict) -> torch.Tensor:
        return model(**inputs).logits

    def torch_bf16_autocast(inputs: dict) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(**inputs).logits.float()

    def torch_bf16_weights(inputs: dict) -> torch.Tensor:
        return bf16(**inputs).logits.float()

    out["torch fp32"] = torch_fp32
    out["torch bf16 autocast"] = torch_bf16_autocast
    out["torch bf16 weights (bf16 artifact)"] = torch_bf16_weights
    return out


def _logits_of(model: OnnxRuntimeModel) -> Callable[[dict], torch.Tensor]:
    return lambda inputs: model(**inputs).logits


@torch.inference_mode()
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds at batch 32 (batch 1 gets 4x)")
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--out", default=str(ROOT / "benchmarks"), help="directory for int8_backends.{json,md}")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    model = build_model()
    g = torch.Generator().manual_seed(1)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        fns = variants(model, Path(tmp))
        print(f"variants ready after {time.perf_counter() - start:.0f} s", file=sys.stderr)
        for batch, rounds in ((32, args.rounds), (1, 4 * args.rounds)):
            ids = torch.randint(1000, 30000, (batch, args.seq), generator=g)
            inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            reference = fns["torch fp32"](inputs)
            times: dict[str, list[float]] = {name: [] for name in fns}
            for name, fn in fns.items():  # warm-up; agreement with torch fp32
                logits = fn(inputs).float()
                row = results.setdefault(name, {})
                row[f"max_abs_logit_diff_bs{batch}"] = round(float((logits - reference).abs().max()), 5)
                row[f"argmax_agreement_bs{batch}"] = float((logits.argmax(-1) == reference.argmax(-1)).float().mean())
            for _ in range(rounds):
                for name, fn in fns.items():
                    t0 = time.perf_counter()
                    fn(inputs)
                    times[name].append((time.perf_counter() - t0) * 1000)
            print(f"batch {batch} done after {time.perf_counter() - start:.0f} s", file=sys.stderr)
            for name in fns:
                results[name][f"latency_ms_bs{batch}"] = round(statistics.median(times[name]), 2)
    base = results["torch fp32"]
    for row in results.values():
        for batch in (32, 1):
            key = f"latency_ms_bs{batch}"
            row[f"speedup_vs_torch_fp32_bs{batch}"] = round(base[key] / row[key], 2)
    meta = {
        "command": " ".join(["OMP_NUM_THREADS=1 python scripts/bench_int8_backends.py", *(argv or sys.argv[1:])]),
        "model": "BertForSequenceClassification hidden 384, 6 layers, 12 heads, FFN 1536 (random weights)",
        "seq_len": args.seq, "threads": 1, "rounds_bs32": args.rounds, "rounds_bs1": 4 * args.rounds,
        "cpu": platform.processor() or platform.machine(), "cpu_flags": cpu_flags(),
        "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__,
        "seconds": round(time.perf_counter() - start, 1),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),  # other processes share the cores
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "int8_backends.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    cols = ["latency_ms_bs32", "speedup_vs_torch_fp32_bs32", "latency_ms_bs1", "speedup_vs_torch_fp32_bs1",
            "max_abs_logit_diff_bs32", "argmax_agreement_bs32"]
    lines = [
        "# CPU serving backends: int8 and bf16 vs fp32", "",
        f"`{meta['command']}` ({meta['seconds']} s). {meta['model']}, sequence length {args.seq}, 1 thread, "
        f"median of {args.rounds} (batch 32) / {4 * args.rounds} (batch 1) interleaved rounds. "
        f"torch {meta['torch']}, onnxruntime {meta['onnxruntime']}. 1-minute load average at the end: "
        f"{meta['load_average_1min_at_end']} (absolute times grow with it; the interleaving keeps ratios fair).", "",
        "CPU flags: " + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in meta["cpu_flags"].items()), "",
        "| variant | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|",
    ]
    lines += [f"| {name} | " + " | ".join(str(row[c]) for c in cols) + " |" for name, row in results.items()]
    (out / "int8_backends.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
