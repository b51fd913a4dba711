"""What lit-llm's two CPU step speed-ups each give on the main job's training step (issue 17), A/B in one run.

The main job's bf16 step (``benchmarks/step_profile.md``) spent 13% of its time drawing dropout masks and about 4%
page-faulting the 47 MB word-embedding gradient that every step allocates anew. lit-llm answers with
``lit_llm.training.dropout`` (masks from integer random bits) and ``lit_llm.training.allocator`` (large freed blocks
stay in the process). This script times the same training step (all-MiniLM-L6-v2 with a classification head,
forward, backward and torch's fused AdamW; ``scripts/profile_step.py``'s step) in four variants:

- ``torch``: torch's dropout and glibc's default allocator, what a plain loop or the HF Trainer runs;
- ``dropout``: lit-llm's dropout only;
- ``allocator``: the allocator setting only;
- ``lit-llm``: both, what ``lit-llm fit`` runs on CPU.

Each variant runs in a fresh process (the allocator setting is process-wide), interleaved round by round, so that
the machine's drift hits all four alike; the ratios are paired within a round.

Usage::
    .venv/bin/python scripts/bench_cpu_step.py --rounds 5 --steps 30 --out benchmarks
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "data" / "models" / "all-MiniLM-L6-v2"
VARIANTS = {"torch": (False, False), "dropout": (True, False), "allocator": (False, True), "lit-llm": (True, True)}


def child(variant: str, precision: str, batch: int, seq: int, steps: int, threads: int,
          model_dir: Path = MODEL) -> dict[str, Any]:
    """Time ``steps`` training steps in this process, after 5 warm-up steps; step times in ms."""
    import torch

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "scripts"))
    import profile_step

    from lit_llm.training.allocator import keep_freed_memory
    from lit_llm.training.dropout import use_fast_dropout

    fast_dropout, allocator = VARIANTS[variant]
    torch.set_num_threads(threads)
    applied = keep_freed_memory() if allocator else False
    profile_step.MODEL = model_dir
    model, step = profile_step.make_step(precision, batch, seq, seed=0)
    swapped = use_fast_dropout(model) if fast_dropout else 0
    for _ in range(5):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(1000 * (time.perf_counter() - start))
    return {"variant": variant, "allocator_applied": applied, "dropout_layers_swapped": swapped, "step_ms": times}


def render(result: dict[str, Any], command: str) -> str:
    rows = result["runs"]
    lines = [
        "# The main job's training step on CPU: torch's dropout and allocator against lit-llm's",
        "",
        f"Command: `{command}`",
        "",
        f"{result['machine']}, {result['threads']} threads, torch {result['torch']}; all-MiniLM-L6-v2 sequence "
        f"classification, {result['precision']}, batch {result['batch']} x {result['seq']} tokens (the main job's "
        f"mean length), forward + backward + fused AdamW. Each cell: one fresh process, {result['steps']} timed "
        f"steps after 5 warm-up steps; {result['rounds']} rounds, the four variants interleaved in each.",
        "",
        "| variant | what it runs | step ms, median of the rounds (min - max) | speed-up over `torch`, paired by "
        "round: median (min - max) |",
        "|---|---|---:|---:|",
    ]
    what = {"torch": "torch's dropout, glibc's default allocator (a plain loop, the HF Trainer)",
            "dropout": "lit-llm's dropout", "allocator": "large freed blocks kept",
            "lit-llm": "both (`lit-llm fit` on CPU)"}
    base = [statistics.median(r["step_ms"]) for r in rows if r["variant"] == "torch"]
    for variant in VARIANTS:
        medians = [statistics.median(r["step_ms"]) for r in rows if r["variant"] == variant]
        ratios = [b / m for b, m in zip(base, medians)]
        declined = VARIANTS[variant][1] and not all(r.get("allocator_applied") for r in rows if r["variant"] == variant)
        label = what[variant] + (" (**the allocator setting was not applied**: not glibc's malloc, or "
                                 "LIT_LLM_MALLOC_TUNING=0)" if declined else "")
        lines.append(f"| `{variant}` | {label} | {statistics.median(medians):.1f} ({min(medians):.1f} - "
                     f"{max(medians):.1f}) | {statistics.median(ratios):.3f} ({min(ratios):.3f} - "
                     f"{max(ratios):.3f}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=28)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="write cpu_step.{json,md} here")
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.precision, args.batch, args.seq, args.steps, args.threads)))
        return 0
    if not MODEL.is_dir():
        print("error: data/models/all-MiniLM-L6-v2 is missing; run `make data` first", file=sys.stderr)
        return 2
    import torch

    runs = []
    for round_ in range(args.rounds):
        for variant in VARIANTS:
            command = [sys.executable, __file__, "--child", variant, "--steps", str(args.steps), "--batch",
                       str(args.batch), "--seq", str(args.seq), "--precision", args.precision, "--threads",
                       str(args.threads)]
            out = subprocess.run(command, capture_output=True, text=True, check=True,
                                 env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
            run = json.loads(out.stdout.strip().splitlines()[-1])
            run["round"] = round_
            runs.append(run)
            print(f"round {round_} {variant}: {statistics.median(run['step_ms']):.1f} ms", file=sys.stderr)
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "threads": args.threads,
              "torch": torch.__version__, "precision": args.precision, "batch": args.batch, "seq": args.seq,
              "steps": args.steps, "rounds": args.rounds, "runs": runs}
    command_line = "python scripts/bench_cpu_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = render(result, command_line.strip())
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cpu_step.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "cpu_step.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
