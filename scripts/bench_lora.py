"""Full fine-tuning vs LoRA vs QLoRA on the main job (all-MiniLM-L6-v2 on Rotten Tomatoes, by-movie split).

Each variant is the committed config run by ``lit-llm fit --test_after_fit true`` in its own process (so peak
memory is that run's alone), with one extra callback, :class:`StepTimer`, appended to the config's callbacks:

- full fine-tuning: ``configs/finetune/minilm_rotten_tomatoes.yaml``
- LoRA (rank 8, all block Linear layers, head trained): ``configs/finetune/minilm_rotten_tomatoes_lora.yaml``
- QLoRA (the same on an NF4 4-bit base, bf16 adapters): ``configs/finetune/minilm_rotten_tomatoes_qlora.yaml``

Measured per variant: test accuracy (the run's classification report, best checkpoint), trainable and total
parameters (at train start, after the adapters are in), peak resident memory of the process (``ru_maxrss``; on
CUDA also ``torch.cuda.max_memory_allocated``), median optimizer-step time (training batches after the first 5,
validation excluded) and the wall clock of the whole command. The W&B logger is replaced by a CSVLogger.

Usage::

    .venv/bin/python scripts/bench_lora.py            # full: the configs as committed (~40 min on 2 free cores)
    .venv/bin/python scripts/bench_lora.py --smoke    # 4 steps per variant on 2 batches of eval, to check it runs

Writes benchmarks/lora.{json,md} (the mode and the command are recorded in them; --smoke writes to
<tmp>/bench_lora_smoke/ so it never overwrites the real results).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml

from lit_llm.training.lora import parameter_counts

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "full fine-tuning": "configs/finetune/minilm_rotten_tomatoes.yaml",
    "LoRA": "configs/finetune/minilm_rotten_tomatoes_lora.yaml",
    "QLoRA": "configs/finetune/minilm_rotten_tomatoes_qlora.yaml",
}
SMOKE_OVERRIDES = ["--trainer.max_steps", "4", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches",
                   "2", "--trainer.limit_test_batches", "2", "--trainer.max_epochs", "1"]


class StepTimer(pl.Callback):
    """Step times, parameter counts and peak memory of a run, written to ``out`` as JSON at train end."""

    def __init__(self, out: str, skip: int = 5) -> None:
        self.out, self.skip = out, skip
        self.times: list[float] = []
        self._start = 0.0
        self.stats: dict[str, Any] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainable, total = parameter_counts(pl_module)  # a 4-bit weight counts its logical size
        self.stats.update(trainable_parameters=trainable, total_parameters=total)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.times.append(time.perf_counter() - self._start)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        timed = self.times[self.skip:] or self.times
        self.stats.update(
            steps=len(self.times),
            median_step_seconds=statistics.median(timed) if timed else None,
            peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        )
        if torch.cuda.is_available():
            self.stats["peak_cuda_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        Path(self.out).write_text(json.dumps(self.stats))


def run_variant(name: str, config: str, work: Path, smoke: bool) -> dict[str, Any]:
    """One ``lit-llm fit`` of ``config`` with StepTimer appended, in a child process; its measurements."""
    spec = yaml.safe_load((REPO / config).read_text())
    stats_file = work / f"{name.replace(' ', '_')}.json"
    spec["trainer"]["callbacks"].append({"class_path": "bench_lora.StepTimer", "init_args": {"out": str(stats_file)}})
    # CSV instead of W&B: no service, no upload; LearningRateMonitor in the configs needs some logger.
    spec["trainer"]["logger"] = {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                 "init_args": {"save_dir": str(work)}}
    patched = work / Path(config).name
    patched.write_text(yaml.safe_dump(spec))
    command = [sys.executable, "-m", "lit_llm.cli", "fit", "--config", str(patched), "--test_after_fit", "true",
               "--run_root", str(work / "runs"), "--run_name", name.replace(" ", "_")]
    command += SMOKE_OVERRIDES if smoke else []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "scripts"), str(REPO)]), WANDB_MODE="offline",
               HF_HUB_OFFLINE="1")
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(stats_file.read_text())
    (run_dir,) = sorted((work / "runs" / name.replace(" ", "_")).glob("version_*"))
    report = json.loads((run_dir / "reports" / "classification_report.json").read_text())
    result.update(config=config, test_accuracy=report["accuracy"], wall_seconds=wall)
    return result


def markdown(results: dict[str, dict[str, Any]], mode: str, command: str) -> str:
    lines = [
        "# Full fine-tuning vs LoRA vs QLoRA on the main job (all-MiniLM-L6-v2, Rotten Tomatoes by movie)",
        "",
        f"Command: `{command}` (mode: {mode}; a run with `--variants` keeps the other variants' earlier results, "
        "each with the command that measured it, in the JSON file). Each variant is its committed config run by "
        "`lit-llm fit --test_after_fit true` in its own process; see the script's docstring for what is measured "
        "how.",
        "",
        "| variant | test accuracy | trainable parameters | peak RSS (MiB) | median step (s) | wall (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        share = 100 * r["trainable_parameters"] / max(r["total_parameters"], 1)
        lines.append(
            f"| {name} | {r['test_accuracy']:.4f} | {r['trainable_parameters']:,} ({share:.2f}%) | "
            f"{r['peak_rss_mib']:.0f} | {r['median_step_seconds']:.3f} | {r['wall_seconds']:.0f} |"
        )
    for name in VARIANTS:
        if name not in results:
            lines.append(f"| {name} | not measured (see the JSON file's `not_measured`) | | | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="4 steps per variant, to check the script runs")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    mode = "smoke" if args.smoke else "full"
    command = "python scripts/bench_lora.py" + (" --smoke" if args.smoke else "")
    # A smoke run checks the script; its numbers mean nothing and never replace the committed results.
    out_dir = Path(tempfile.gettempdir()) / "bench_lora_smoke" if args.smoke else REPO / "benchmarks"
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_lora_") as tmp:
        for name in args.variants:
            results[name] = run_variant(name, VARIANTS[name], Path(tmp), args.smoke)
            print(f"{name}: {json.dumps(results[name])}", flush=True)
    for result in results.values():
        result["command"] = command + " --variants " + " ".join(f"'{v}'" for v in args.variants)
    if not args.smoke and (out_dir / "lora.json").is_file():  # keep the variants this run did not measure
        earlier = json.loads((out_dir / "lora.json").read_text()).get("results", {})
        results = {name: results.get(name) or earlier[name] for name in VARIANTS if name in results or name in earlier}
    payload = {"mode": mode, "command": command, "torch": torch.__version__, "results": results}
    (out_dir / "lora.json").write_text(json.dumps(payload, indent=1))
    (out_dir / "lora.md").write_text(markdown(results, mode, command))
    print(markdown(results, mode, command))


if __name__ == "__main__":
    main()
