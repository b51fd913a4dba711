"""The main job's own training loop with and without lit-llm's two CPU speed-ups, A/B in one run (issue 17).

``scripts/bench_cpu_step.py`` times one training step in isolation; this times the real thing: ``lit-llm fit`` of
``configs/finetune/minilm_rotten_tomatoes.yaml`` (bf16, EMA, clipping, length-grouped batches, Lightning around
it) for its first ``--steps`` optimizer steps, once as lit-llm ships it and once with torch's dropout and glibc's
default allocator (``LIT_LLM_MALLOC_TUNING=0`` and ``use_fast_dropout`` made a no-op), each in a fresh process,
in ABBA order by round. The figure is the run summary's training-loop samples/s (validation excluded).

Usage::
    .venv/bin/python scripts/bench_cpu_job.py --rounds 3 --steps 120 --out benchmarks
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/finetune/minilm_rotten_tomatoes.yaml"
LOOP = re.compile(r"training loop ([\d.]+) s \(([\d,]+) batches, ([\d,]+) samples, ([\d.]+) samples/s\)")
VARIANTS = ("lit-llm", "torch")


def child(variant: str, steps: int, run_root: str, name: str) -> int:
    """One ``lit-llm fit`` in this process; ``torch``: without lit-llm's dropout and allocator setting."""
    if variant == "torch":
        os.environ["LIT_LLM_MALLOC_TUNING"] = "0"
        import lit_llm.modules.building as building

        building.use_fast_dropout = lambda model: 0  # type: ignore[assignment]
    from lit_llm.cli import main as lit_llm

    return lit_llm(["fit", "--config", CONFIG, "--trainer.max_steps", str(steps), "--trainer.logger",
                    "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", f"{run_root}/csv",
                    "--run_root", run_root, "--run_name", name])


def loop_figures(output: str) -> dict[str, float]:
    """The training-loop line of a run summary: seconds, batches, samples, samples/s.

    Raises:
        ValueError: the output has no such line.
    """
    found = LOOP.search(output)
    if found is None:
        raise ValueError("no 'training loop ... samples/s' line in the run's output")
    seconds, batches, samples, rate = found.groups()
    return {"loop_s": float(seconds), "batches": int(batches.replace(",", "")),
            "samples": int(samples.replace(",", "")), "samples_per_s": float(rate)}


def render(result: dict[str, Any], command: str) -> str:
    by_round: dict[int, dict[str, float]] = {}
    for run in result["runs"]:
        by_round.setdefault(run["round"], {})[run["variant"]] = run["samples_per_s"]
    ratios = [r["lit-llm"] / r["torch"] for r in by_round.values()]
    lines = [
        "# The main job's training loop on CPU: lit-llm as shipped against torch's dropout and allocator",
        "",
        f"Command: `{command}`",
        "",
        f"`lit-llm fit --config {CONFIG}`, its first {result['steps']} optimizer steps, {result['rounds']} rounds "
        "in ABBA order, each run a fresh process; training-loop samples/s from the run summary (validation "
        f"excluded). {result['machine']}, torch {result['torch']}.",
        "",
        "| round | lit-llm samples/s | torch's dropout and allocator, samples/s | lit-llm / torch |",
        "|---:|---:|---:|---:|",
    ]
    for round_, r in sorted(by_round.items()):
        lines.append(f"| {round_} | {r['lit-llm']:.1f} | {r['torch']:.1f} | {r['lit-llm'] / r['torch']:.3f} |")
    lines.append(f"| **median** | | | **{statistics.median(ratios):.3f}** ({min(ratios):.3f} - {max(ratios):.3f}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--out", type=Path, default=None, help="write cpu_job.{json,md} here")
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "RUN_ROOT", "NAME"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child[0], args.steps, args.child[1], args.child[2])
    import platform

    import torch

    runs = []
    with tempfile.TemporaryDirectory(prefix="bench_cpu_job_") as work:
        for round_ in range(args.rounds):
            order = VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                name = f"{variant}_{round_}"
                out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--child", variant,
                                      f"{work}/{name}", name], cwd=ROOT, capture_output=True, text=True, check=True)
                run = {"round": round_, "variant": variant, **loop_figures(out.stdout + out.stderr)}
                runs.append(run)
                print(f"round {round_} {variant}: {run['samples_per_s']} samples/s", file=sys.stderr)
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "torch": torch.__version__,
              "steps": args.steps, "rounds": args.rounds, "runs": runs}
    command = "python scripts/bench_cpu_job.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = render(result, command.strip())
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cpu_job.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "cpu_job.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
