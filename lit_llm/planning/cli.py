"""``lit-llm plan``: which training techniques fit a model on given hardware, how fast, and a config to run it.

Example::
    lit-llm plan --model bert-large --task mlm --seq-len 512 --global-batch 256 --hardware A100-40GB \\
        --devices 8 --tokens 2e9 --emit-config configs/pretrain/bert_large_plan.yaml
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lit_llm.planning.choice import PRECISIONS, STRATEGIES
from lit_llm.planning.emit import emit_config
from lit_llm.planning.params import TASKS
from lit_llm.planning.plan import NothingFitsError, PlanRequest, make_plan
from lit_llm.planning.presets import (
    HARDWARE_PRESETS,
    MODEL_PRESETS,
    HardwareSpec,
    ModelDims,
    resolve_hardware,
    resolve_model,
)

__all__ = ["build_parser", "request_from_args", "main"]

_DIM_FLAGS = ("layers", "hidden", "heads", "vocab", "ffn", "max_positions")


def _count(text: str) -> int:
    # accept 2e9 and 2_000_000_000 for token counts
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 1e9 or 2_000_000_000)") from None
    if value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lit-llm plan",
        description="Estimate memory and time of every way to train a model on given hardware and recommend one.",
    )
    m = parser.add_argument_group("model")
    m.add_argument("--model", help=f"a preset ({', '.join(MODEL_PRESETS)}), an HF config directory or hub id")
    m.add_argument("--arch", choices=("bert", "gpt2", "llama"), default="bert", help="with explicit dimensions")
    for flag in _DIM_FLAGS:
        m.add_argument(f"--{flag.replace('_', '-')}", type=int, help="explicit dimension (instead of --model)")
    m.add_argument("--task", required=True, choices=TASKS)
    m.add_argument("--num-labels", type=int, default=2, help="classes, for --task classification")
    m.add_argument("--attention", choices=("flash", "eager"), default="flash",
                   help="flash: SDPA/FlashAttention keeps no s*s matrix (default); eager keeps the softmax")
    w = parser.add_argument_group("workload")
    w.add_argument("--seq-len", type=int, required=True)
    w.add_argument("--global-batch", type=int, required=True, help="sequences per optimizer step, all devices")
    w.add_argument("--tokens", type=_count, help="tokens to train on (or --steps)")
    w.add_argument("--steps", type=_count, help="optimizer steps (or --tokens)")
    h = parser.add_argument_group("hardware")
    h.add_argument("--hardware", default="A100-80GB", help=f"{', '.join(HARDWARE_PRESETS)} or custom")
    h.add_argument("--devices", type=int, default=1, help="devices per node")
    h.add_argument("--nodes", type=int, default=1)
    h.add_argument("--memory-gb", type=float, help="memory per device, GiB")
    h.add_argument("--peak-tflops", type=float, help="dense 16-bit peak TFLOP/s")
    h.add_argument("--peak-tflops-fp32", type=float, help="dense fp32 peak TFLOP/s")
    h.add_argument("--mfu", type=float, help="expected model FLOPs utilization, e.g. 0.4")
    h.add_argument("--bandwidth-gbps", type=float, help="per-device bandwidth within a node, GB/s")
    h.add_argument("--inter-node-gbps", type=float, help="per-device bandwidth between nodes, GB/s")
    c = parser.add_argument_group("constraints")
    c.add_argument("--micro-batch", type=int, help="fix the micro-batch (default: search)")
    c.add_argument("--precision", choices=PRECISIONS, help="fix the precision (default: try all supported)")
    c.add_argument("--strategy", choices=STRATEGIES, help="fix the strategy (default: try all that apply)")
    c.add_argument("--no-offload", action="store_true", help="do not consider FSDP CPU offload")
    o = parser.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="print the whole plan as JSON")
    o.add_argument("--emit-config", metavar="FILE", help="write a LightningCLI config for the recommended plan")
    o.add_argument("--data-path", help="training data to put in the emitted config")
    o.add_argument("--top", type=int, default=12, help="candidates to show in the table")
    return parser


def _hardware(args: argparse.Namespace) -> HardwareSpec:
    peaks: dict[str, float] | None = None
    if args.hardware.lower() == "custom":
        missing = [f for f in ("memory_gb", "peak_tflops") if getattr(args, f) is None]
        if missing:
            raise ValueError(f"--hardware custom needs {' and '.join('--' + f.replace('_', '-') for f in missing)} "
                             "(and optionally --peak-tflops-fp32, --bandwidth-gbps, --inter-node-gbps, --mfu).")
        fp32 = args.peak_tflops_fp32 or args.peak_tflops / 8
        return HardwareSpec("custom", args.memory_gb, {"32": fp32, "bf16": args.peak_tflops, "16": args.peak_tflops},
                            mfu=args.mfu or 0.4, intra_node_gbps=args.bandwidth_gbps or 25.0,
                            inter_node_gbps=args.inter_node_gbps or 12.5)
    base = resolve_hardware(args.hardware)
    if args.peak_tflops is not None or args.peak_tflops_fp32 is not None:
        peaks = dict(base.peak_tflops)
        if args.peak_tflops is not None:
            peaks.update({k: args.peak_tflops for k in peaks if k != "32"})
        if args.peak_tflops_fp32 is not None:
            if not base.is_gpu and args.peak_tflops is None:
                # a CPU's 16-bit rate follows its fp32 rate (same units), keep the preset's ratio
                scale = args.peak_tflops_fp32 / base.peak_tflops["32"]
                peaks = {k: v * scale for k, v in peaks.items()}
            peaks["32"] = args.peak_tflops_fp32
    return resolve_hardware(args.hardware, memory_gib=args.memory_gb, peak_tflops=peaks, mfu=args.mfu,
                            intra_node_gbps=args.bandwidth_gbps, inter_node_gbps=args.inter_node_gbps)


def _model(args: argparse.Namespace) -> tuple[ModelDims, Any]:
    given = [f for f in _DIM_FLAGS if getattr(args, f) is not None]
    if args.model and given:
        raise ValueError(f"give --model {args.model!r} or explicit dimensions "
                         f"({', '.join('--' + g.replace('_', '-') for g in given)}), not both.")
    if args.model:
        dims = resolve_model(args.model)
        return dims, (None if args.model in MODEL_PRESETS else args.model)
    missing = [f for f in ("layers", "hidden", "heads", "vocab") if getattr(args, f) is None]
    if missing:
        raise ValueError("give --model (a preset, HF directory or hub id) or every explicit dimension; missing: "
                         + ", ".join("--" + f for f in missing) + ".")
    gpt2 = args.arch == "gpt2"
    dims = ModelDims(
        f"custom-{args.arch}-L{args.layers}-h{args.hidden}", args.arch, args.layers, args.hidden, args.heads,
        args.ffn or 4 * args.hidden, args.vocab,
        max_positions=0 if args.arch == "llama" else (args.max_positions or max(512, args.seq_len)),
        activation="gelu_new" if gpt2 else ("silu" if args.arch == "llama" else "gelu"),
        dropout=0.0 if args.arch == "llama" else 0.1, attention_dropout=0.0 if args.arch == "llama" else 0.1,
    )
    return dims, None


def request_from_args(args: argparse.Namespace) -> PlanRequest:
    """Turn parsed arguments into a :class:`PlanRequest`.

    Raises:
        ValueError: contradictory flags, an unknown preset, a missing dimension.
    """
    dims, spec = _model(args)
    return PlanRequest(
        dims, args.task, args.seq_len, args.global_batch, _hardware(args), devices=args.devices, nodes=args.nodes,
        tokens=args.tokens, steps=args.steps, micro_batch=args.micro_batch, precision=args.precision,
        strategy=args.strategy, allow_offload=not args.no_offload, attention=args.attention,
        num_labels=args.num_labels, model_spec=spec,
    )


def main(argv: list[str] | None = None) -> int:
    """Run ``lit-llm plan``; 0 on success, 1 when nothing fits, 2 on bad input (the message says why)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        request = request_from_args(args)
        report = make_plan(request)
        if args.emit_config:
            path = emit_config(request, report.best, args.emit_config, args.data_path, report.reasons)
    except NothingFitsError as err:
        print(f"lit-llm plan: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileExistsError) as err:
        print(f"lit-llm plan: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        out = report.as_dict()
        if args.emit_config:
            out["config"] = str(path)
        print(json.dumps(out, indent=2))
    else:
        from lit_llm.planning.render import render_plan

        render_plan(report, top=args.top)
        if args.emit_config:
            print(f"config written: {path}  (run it with: lit-llm fit --config {path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
