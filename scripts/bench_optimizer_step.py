"""Time of one optimizer step on all-MiniLM-L6-v2's parameters: torch's AdamW implementations and lit-llm's default.

torch picks an AdamW implementation by device: on a CPU, given neither ``fused`` nor ``foreach``, it updates the
parameters one tensor at a time. lit-llm's modules build the optimizer through
``lit_llm.training.optim.build_optimizer``, which switches an unconfigured Adam / AdamW to torch's fused kernel
(the HF Trainer's default ``adamw_torch_fused``). This script times the step alone (gradients already there), for:

- ``torch default``: ``torch.optim.AdamW(groups, lr=...)`` as a plain loop writes it;
- ``foreach``: ``foreach=True``;
- ``fused``: ``fused=True``;
- ``lit-llm default``: ``build_optimizer(model, partial(torch.optim.AdamW, lr=...))``, what the configs get;
- ``AdamW8bit``: bitsandbytes' 8-bit AdamW, when installed.

Each round times every variant in a rotated order (``--steps`` steps after 3 warm-up steps); the table gives the
median over rounds, min - max, and each variant's time relative to torch's default in the same round.

A second table puts the step beside the rest of a training step: forward and backward of a batch (``--batch`` x
``--seq`` tokens, sequence classification) in fp32 and under bf16 autocast, median of ``--rounds`` timings. So it
shows how much of a step bf16 can speed up at all: the optimizer step runs on the fp32 master weights either way.

Usage::
    .venv/bin/python scripts/bench_optimizer_step.py --rounds 7 --threads 2 --out benchmarks
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
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

from lit_llm.training.optim import build_optimizer, no_decay_param_groups  # noqa: E402


def variants(lr: float) -> dict[str, Any]:
    """name -> function(model) -> optimizer."""
    out: dict[str, Any] = {
        "torch default": lambda m: torch.optim.AdamW(no_decay_param_groups(m, 0.01), lr=lr),
        "foreach": lambda m: torch.optim.AdamW(no_decay_param_groups(m, 0.01), lr=lr, foreach=True),
        "fused": lambda m: torch.optim.AdamW(no_decay_param_groups(m, 0.01), lr=lr, fused=True),
        "lit-llm default": lambda m: build_optimizer(m, functools.partial(torch.optim.AdamW, lr=lr,
                                                                          weight_decay=0.01)),
    }
    if importlib.util.find_spec("bitsandbytes") is not None:
        import bitsandbytes as bnb

        out["AdamW8bit"] = lambda m: build_optimizer(m, functools.partial(bnb.optim.AdamW8bit, lr=lr,
                                                                          weight_decay=0.01))
    return out


def time_steps(model: torch.nn.Module, make: Any, steps: int) -> float:
    """Milliseconds per optimizer step, after 3 warm-up steps that create the states."""
    optimizer = make(model)
    for _ in range(3):
        optimizer.step()
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - start) / steps * 1000


def forward_backward(model: torch.nn.Module, batch: int, seq: int, rounds: int) -> dict[str, list[float]]:
    """Milliseconds of one forward + backward pass per precision (each the median of 5 after 2 warm-up passes),
    ``rounds`` times, the precisions alternating."""
    model.train()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (batch, seq), generator=generator)
    labels = torch.randint(0, 2, (batch,), generator=generator)
    out: dict[str, list[float]] = {"fp32": [], "bf16 autocast": []}
    for _ in range(rounds):
        for precision in out:
            times = []
            for i in range(7):
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision != "fp32"):
                    loss = model(input_ids=ids, labels=labels).loss
                loss.backward()
                if i >= 2:
                    times.append((time.perf_counter() - start) * 1000)
            out[precision].append(statistics.median(times))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / "data" / "models" / "all-MiniLM-L6-v2"))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=28, help="tokens per example (the main job's grouped batches: ~28)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    logging.set_verbosity_error()
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2)
    torch.manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    n_params = sum(p.numel() for p in model.parameters())
    makers = variants(1e-4)
    names = list(makers)
    rounds: list[dict[str, float]] = []
    for r in range(args.rounds):
        timings = {}
        for name in names[r % len(names):] + names[: r % len(names)]:
            timings[name] = time_steps(model, makers[name], args.steps)
        rounds.append(timings)
        print(f"round {r}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in timings.items()), flush=True)
    passes = forward_backward(model, args.batch, args.seq, args.rounds)
    rows = {}
    for name in names:
        ms = [t[name] for t in rounds]
        rel = [t[name] / t["torch default"] for t in rounds]
        rows[name] = {"ms_median": statistics.median(ms), "ms_min": min(ms), "ms_max": max(ms),
                      "vs_torch_default_median": statistics.median(rel), "vs_min": min(rel), "vs_max": max(rel),
                      "ms": ms}
    command = "python scripts/bench_optimizer_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {"command": command, "model": Path(args.model).name, "parameters": n_params, "threads": args.threads,
              "rounds": args.rounds, "steps": args.steps, "torch": torch.__version__,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores", "rows": rows,
              "batch": args.batch, "seq": args.seq, "forward_backward_ms": passes}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "optimizer_step.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# One optimizer step on all-MiniLM-L6-v2 (CPU)", "", f"Command: `{command}`", "",
             f"{result['machine']}, {args.threads} threads, torch {torch.__version__}; {n_params / 1e6:.1f}M "
             f"parameters with gradients in place; {args.rounds} rounds of {args.steps} steps per variant, the "
             "variants in a rotated order each round. Median over rounds (min - max).", "",
             "| variant | ms per step | relative to torch's default (same round) |", "|---|---:|---:|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['ms_median']:.1f} ({row['ms_min']:.1f} - {row['ms_max']:.1f}) | "
                     f"{row['vs_torch_default_median']:.3f} ({row['vs_min']:.3f} - {row['vs_max']:.3f}) |")
    title = f"## A whole training step: forward + backward of {args.batch} x {args.seq} tokens, then the optimizer"
    lines += ["", title,
              "", "| precision | forward + backward, ms | + torch default step | + fused step | optimizer share "
              "(default / fused) |", "|---|---:|---:|---:|---:|"]
    default, fused = rows["torch default"]["ms_median"], rows["fused"]["ms_median"]
    for precision, ms in passes.items():
        med = statistics.median(ms)
        lines.append(f"| {precision} | {med:.1f} ({min(ms):.1f} - {max(ms):.1f}) | {med + default:.1f} | "
                     f"{med + fused:.1f} | {default / (med + default):.0%} / {fused / (med + fused):.0%} |")
    (args.out / "optimizer_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
