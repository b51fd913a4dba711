"""Where a training step of the main job's model goes, in fp32 and under bf16 autocast (issue 17).

bf16 matmuls run several times faster than fp32 ones on CPUs with bf16 hardware, yet a whole training step gains
much less. This script profiles whole steps (forward, backward and lit-llm's default optimizer, torch's fused
AdamW) of all-MiniLM-L6-v2 with a classification head, with ``torch.profiler``, and sums each operator's *self*
CPU time into a few kinds: matmuls, the weight casts autocast makes, softmax, layer norm, GELU, dropout,
element-wise arithmetic, the optimizer, the embedding lookup, and the rest. Each kind's time in fp32 and in bf16
side by side says which part bf16 speeds up and which it does not.

The profiler adds its own cost to every operator call, so the totals are above an unprofiled step's; the table
also gives each precision's unprofiled step time (median over ``--steps`` steps) to set them against.

Usage::
    .venv/bin/python scripts/profile_step.py --threads 2 --out benchmarks
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lit_llm.training.optim import build_optimizer  # noqa: E402

MODEL = ROOT / "data" / "models" / "all-MiniLM-L6-v2"

# First match wins; names are aten operators as the profiler reports them (forward and autograd backward).
KINDS: list[tuple[str, tuple[str, ...]]] = [
    ("optimizer (fused AdamW)", ("_fused_adamw", "_fused_adam")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
                "mkldnn", "onednn")),
    ("casts (autocast / dtype copies)", ("aten::_to_copy", "aten::to", "aten::copy_", "aten::_autocast")),
    ("softmax / attention", ("softmax", "scaled_dot_product", "_efficient_attention", "_flash_attention")),
    ("layer norm", ("layer_norm",)),
    ("GELU", ("gelu",)),
    ("dropout", ("dropout", "bernoulli", "native_dropout")),
    ("embedding", ("embedding",)),
    ("element-wise arithmetic", ("aten::add", "aten::mul", "aten::div", "aten::sub", "aten::fill_", "aten::zero_",
                                 "aten::sum", "aten::ne", "aten::where", "aten::masked_fill")),
]


def kind_of(name: str) -> str:
    for kind, needles in KINDS:
        if any(needle in name for needle in needles):
            return kind
    return "other"


def make_step(precision: str, batch: int, seq: int, seed: int) -> tuple[Any, Any]:
    """(model, step function) for one precision; the step runs forward, backward and the optimizer."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(str(MODEL), num_labels=2)
    model.train()
    optimizer = build_optimizer(model, functools.partial(torch.optim.AdamW, lr=1e-4, weight_decay=0.01))
    generator = torch.Generator().manual_seed(seed)
    # Above the special and most frequent tokens where the vocabulary has them.
    input_ids = torch.randint(min(1000, model.config.vocab_size // 2), model.config.vocab_size, (batch, seq),
                              generator=generator)
    attention_mask = torch.ones_like(input_ids)
    labels = torch.randint(0, 2, (batch,), generator=generator)

    def step() -> None:
        autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
                    else contextlib.nullcontext())
        with autocast:
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, step


def profile(precision: str, batch: int, seq: int, steps: int, seed: int) -> dict[str, Any]:
    _, step = make_step(precision, batch, seq, seed)
    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    by_kind: dict[str, float] = {}
    by_op: dict[str, float] = {}
    for event in prof.key_averages():
        ms = event.self_cpu_time_total / 1000 / steps
        by_kind[kind_of(event.key)] = by_kind.get(kind_of(event.key), 0.0) + ms
        by_op[event.key] = ms
    top = dict(sorted(by_op.items(), key=lambda item: -item[1])[:12])
    return {"step_ms": 1000 * statistics.median(times), "step_ms_min": 1000 * min(times),
            "step_ms_max": 1000 * max(times), "profiled_ms": sum(by_kind.values()), "by_kind_ms": by_kind,
            "top_ops_ms": top}


def render(result: dict[str, Any], command: str) -> str:
    fp32, bf16 = result["precisions"]["fp32"], result["precisions"]["bf16"]
    kinds = [kind for kind, _ in KINDS] + ["other"]
    lines = [
        "# Where a training step goes: all-MiniLM-L6-v2, fp32 against bf16 autocast (CPU)",
        "",
        f"Command: `{command}`",
        "",
        f"{result['machine']}, {result['threads']} threads, torch {result['torch']}; sequence classification, "
        f"batch {result['batch']} x {result['seq']} tokens, forward + backward + lit-llm's default optimizer "
        f"(torch's fused AdamW). Self CPU time per step by `torch.profiler`, summed by kind of operator, over "
        f"{result['steps']} profiled steps after {result['steps']} unprofiled ones and 3 warm-up steps.",
        "",
        "| kind | fp32 ms | bf16 ms | fp32 / bf16 | share of the bf16 step |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind in kinds:
        a, b = fp32["by_kind_ms"].get(kind, 0.0), bf16["by_kind_ms"].get(kind, 0.0)
        if a < 0.05 and b < 0.05:
            continue
        ratio = f"{a / b:.2f}" if b > 0 else "-"
        lines.append(f"| {kind} | {a:.1f} | {b:.1f} | {ratio} | {b / bf16['profiled_ms']:.0%} |")
    lines.append(f"| **all, profiled** | {fp32['profiled_ms']:.1f} | {bf16['profiled_ms']:.1f} | "
                 f"{fp32['profiled_ms'] / bf16['profiled_ms']:.2f} | 100% |")
    lines.append(f"| step unprofiled, median (min - max) | {fp32['step_ms']:.1f} ({fp32['step_ms_min']:.1f} - "
                 f"{fp32['step_ms_max']:.1f}) | {bf16['step_ms']:.1f} ({bf16['step_ms_min']:.1f} - "
                 f"{bf16['step_ms_max']:.1f}) | {fp32['step_ms'] / bf16['step_ms']:.2f} | |")
    lines += ["", "The operators that took the most self time, per step:", "",
              "| fp32 operator | ms | bf16 operator | ms |", "|---|---:|---:|---:|"]
    for (a_op, a_ms), (b_op, b_ms) in zip(fp32["top_ops_ms"].items(), bf16["top_ops_ms"].items()):
        lines.append(f"| `{a_op}` | {a_ms:.1f} | `{b_op}` | {b_ms:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=28, help="tokens per example (the main job's mean is about 28)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write step_profile.{json,md} here")
    args = parser.parse_args(argv)
    if not MODEL.is_dir():
        print(f"error: {MODEL} is missing; run `make data` first", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "threads": args.threads,
        "torch": torch.__version__, "batch": args.batch, "seq": args.seq, "steps": args.steps,
        "precisions": {p: profile(p, args.batch, args.seq, args.steps, args.seed) for p in ("fp32", "bf16")},
    }
    command = "python scripts/profile_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = render(result, command.strip())
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "step_profile.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "step_profile.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
