"""Peak tensor memory and time of a training step of the main job's model: full fine-tuning vs LoRA vs QLoRA.

all-MiniLM-L6-v2 with a 2-label head, a batch of 32 x 64 tokens (the main job's batch and max length), AdamW, one
warm-up step (so the optimizer states exist), then one measured step. The peak is what was live before the step
(weights, buffers, optimizer states) plus the highest running total of the bytes torch's CPU allocator handed out
during it (``torch.profiler`` with ``profile_memory=True``; the method of ``scripts/measure_planner.py``). LoRA is
run with the adapters' input dropout of the committed configs (0.1) and without it (0.0): peft's dropout keeps a
dropped-out copy of each adapted layer's input for the backward pass. Step time: the median of 5 further
steps (forward, backward, AdamW), 1 thread, without the profiler. QLoRA computes in the dtype ``LoRA``'s
``compute_dtype="auto"`` picks on this machine (fp32 on a CPU without bf16 matmul hardware).

Usage::
    .venv/bin/python scripts/bench_lora_step.py        # ~3 min; writes benchmarks/lora_step.{json,md}

Each variant runs in its own process (``--one``), so allocations of one do not linger in the next.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "data" / "models" / "all-MiniLM-L6-v2"
VARIANTS = {  # name: (LoRA dropout or None for full fine-tuning, quantize_base)
    "full fine-tuning": (None, None),
    "LoRA r8, dropout 0.1 (committed config)": (0.1, None),
    "LoRA r8, dropout 0.0": (0.0, None),
    "QLoRA r8 NF4, dropout 0.1 (committed config)": (0.1, "nf4"),
}
COMMAND = "python scripts/bench_lora_step.py"


def measure(name: str) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModelForSequenceClassification

    sys.path.insert(0, str(REPO / "scripts"))
    from measure_planner import _storage_bytes, _walk

    from lit_llm.training.lora import (
        LoraSpec,
        apply_lora,
        find_head,
        find_lora_targets,
        parameter_counts,
        qlora_compute_dtype,
    )

    dropout, quantize = VARIANTS[name]
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(MODEL, num_labels=2)
    if dropout is not None:
        spec = LoraSpec(targets=find_lora_targets(model), rank=8, alpha=16, dropout=dropout, head=find_head(model),
                        quantize_base=quantize, compute_dtype=qlora_compute_dtype("cpu"))
        apply_lora(model, spec)
    model.train()
    trainable, total = parameter_counts(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(1000, 20000, (32, 64), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 2, (32,))}

    def forward_backward_step() -> None:
        model(**batch).loss.backward()
        optimizer.step()

    forward_backward_step()  # warm-up: the optimizer states are created here
    optimizer.zero_grad(set_to_none=True)
    live = _storage_bytes([*model.parameters(), *model.buffers()]
                          + [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)])
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        forward_backward_step()
    totals = [ev.extra_fields.total_allocated
              for ev in _walk(prof.profiler.kineto_results.experimental_event_tree())
              if type(ev.extra_fields).__name__ == "_ExtraFields_Allocation" and ev.extra_fields.device.type == "cpu"]
    times = []
    for _ in range(5):
        optimizer.zero_grad(set_to_none=True)
        start = time.perf_counter()
        forward_backward_step()
        times.append(time.perf_counter() - start)
    mib = 2**20
    dtypes = {str(m.compute_dtype) for m in model.modules() if hasattr(m, "compute_dtype")}  # 4-bit layers
    return {"median_step_seconds": statistics.median(times), "compute_dtype": ", ".join(sorted(dtypes)) or "-",
            "trainable_parameters": trainable, "total_parameters": total, "live_before_step_mib": live / mib,
            "step_peak_mib": (live + max(totals)) / mib, "activations_and_temporaries_mib": max(totals) / mib}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks")
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one)))
        return 0
    results = {}
    for name in VARIANTS:
        proc = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        if proc.returncode != 0:
            results[name] = {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
        else:
            results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(name, results[name], flush=True)
    lines = ["# Memory and time of a training step: full fine-tuning vs LoRA vs QLoRA (all-MiniLM-L6-v2)", "",
             f"Command: `{COMMAND}`. Batch 32 x 64 tokens, AdamW, 1 thread; see the script's docstring for the "
             f"method. Load average over the last minute at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} "
             "CPUs (above 1, other work shared the machine: compare the step-time ratios, not the seconds).", "",
             "| variant | trainable parameters | weights + optimizer states (MiB) | activations + temporaries (MiB) "
             "| step peak (MiB) | median step (s) | step time vs full |", "|---|---:|---:|---:|---:|---:|---:|"]
    full_time = results.get("full fine-tuning", {}).get("median_step_seconds")
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | | | |")
            continue
        lines.append(f"| {name} | {r['trainable_parameters']:,} | {r['live_before_step_mib']:.1f} | "
                     f"{r['activations_and_temporaries_mib']:.1f} | {r['step_peak_mib']:.1f} | "
                     f"{r['median_step_seconds']:.3f} | "
                     + (f"{r['median_step_seconds'] / full_time:.2f}x |" if full_time else "|"))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lora_step.json").write_text(json.dumps({"command": COMMAND, "results": results}, indent=1))
    (args.out / "lora_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
