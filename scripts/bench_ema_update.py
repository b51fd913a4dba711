"""Time of one EMA update on all-MiniLM-L6-v2: Lightning's EMAWeightAveraging against lit-llm's EMA.

Both keep ``ema = decay * ema + (1 - decay) * weights`` in a ``torch.optim.swa_utils.AveragedModel``. Lightning's
``EMAWeightAveraging`` gives it ``avg_fn`` (one tensor at a time, three full-size temporaries per tensor);
``lit_llm.callbacks.EMA`` gives it ``multi_avg_fn`` (torch's foreach ``lerp``, in place; integer buffers copied).
Each round times both (``--updates`` updates after 2 warm-up updates) in alternating order; the table gives the
median over rounds with min - max, and the ratio within each round.

Usage::
    .venv/bin/python scripts/bench_ema_update.py --rounds 7 --threads 2 --out benchmarks
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lit_llm.callbacks.ema import ema_update  # noqa: E402

MODEL = ROOT / "data" / "models" / "all-MiniLM-L6-v2"
DECAY = 0.995


def averages(model: torch.nn.Module) -> dict[str, AveragedModel]:
    """name -> the AveragedModel each callback builds (use_buffers=True, both callbacks' default)."""
    return {
        "Lightning EMAWeightAveraging (avg_fn)": AveragedModel(model, use_buffers=True,
                                                               avg_fn=get_ema_avg_fn(DECAY)),
        "lit-llm EMA (multi_avg_fn)": AveragedModel(model, use_buffers=True,
                                                    multi_avg_fn=ema_update(DECAY)),
    }


def time_updates(average: AveragedModel, model: torch.nn.Module, updates: int) -> float:
    for _ in range(2):
        average.update_parameters(model)
    start = time.perf_counter()
    for _ in range(updates):
        average.update_parameters(model)
    return (time.perf_counter() - start) / updates * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="write ema_update.{json,md} here")
    args = parser.parse_args(argv)
    if not MODEL.is_dir():
        print(f"error: {MODEL} is missing; run `make data` first", file=sys.stderr)
        return 2
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(args.threads)
    model = AutoModelForSequenceClassification.from_pretrained(str(MODEL), num_labels=2)
    runs = averages(model)
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        for name in names if round_index % 2 == 0 else names[::-1]:
            times[name].append(time_updates(runs[name], model, args.updates))
    ratios = [a / b for a, b in zip(times[names[0]], times[names[1]], strict=True)]
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "threads": args.threads,
        "torch": torch.__version__, "parameters": sum(p.numel() for p in model.parameters()), "decay": DECAY,
        "rounds": args.rounds, "updates": args.updates, "ms_per_update": times, "ratio_per_round": ratios,
    }
    command = "python scripts/bench_ema_update.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# One EMA update on all-MiniLM-L6-v2 (CPU)", "", f"Command: `{command.strip()}`", "",
        f"{result['machine']}, {args.threads} threads, torch {result['torch']}; {result['parameters']:,} parameters "
        f"and the buffers; {args.rounds} rounds of {args.updates} updates each, both variants per round in "
        "alternating order. Median over rounds (min - max).", "",
        "| variant | ms per update |", "|---|---:|",
    ]
    for name in names:
        lines.append(f"| {name} | {statistics.median(times[name]):.1f} ({min(times[name]):.1f} - "
                     f"{max(times[name]):.1f}) |")
    lines += ["", f"Lightning's / lit-llm's, per round: median {statistics.median(ratios):.1f}x "
              f"({min(ratios):.1f} - {max(ratios):.1f})."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "ema_update.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "ema_update.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
