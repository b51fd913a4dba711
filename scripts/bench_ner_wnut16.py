"""Benchmark: fine-tune all-MiniLM-L6-v2 on WNUT-16 with configs/finetune/minilm_wnut16.yaml; record test entity F1.

Runs ``lit-llm fit --config configs/finetune/minilm_wnut16.yaml --test_after_fit true`` (plus the overrides given
on this script's command line, e.g. a shorter run for a busy machine) as a subprocess, times it, reads the test
report the module writes (``ner_report.json``) and writes ``benchmarks/ner_wnut16.json`` and ``.md``.

Usage::

    .venv/bin/python scripts/prepare_wnut16.py
    .venv/bin/python scripts/bench_ner_wnut16.py -- --trainer.max_epochs 2 --trainer.max_time 00:00:09:00
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

CONFIG = "configs/finetune/minilm_wnut16.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks"))
    parser.add_argument("overrides", nargs="*", help="extra lit-llm arguments, after --")
    args = parser.parse_args(argv)
    for need in ("data/wnut16/train.conll", "data/models/all-MiniLM-L6-v2"):
        if not Path(need).exists():
            sys.exit(f"{need} is missing: run scripts/prepare_wnut16.py and scripts/prepare_data.py first.")

    cmd = [sys.executable, "-m", "lit_llm.cli", "fit", "--config", CONFIG, "--test_after_fit", "true",
           "--run_name", "bench_ner_wnut16", *args.overrides]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        print(log[-6000:], file=sys.stderr)
        return proc.returncode
    match = re.search(r"run directory:\s+(\S+)", log)
    if match is None:
        sys.exit("could not find the run directory in the CLI output")
    run_dir = Path(match.group(1))
    report = json.loads((run_dir / "reports" / "ner_report.json").read_text())
    steps = re.findall(r"best checkpoint:\s+(\S+)", log)
    stopped = [s.rstrip(".") for s in re.findall(r"`Trainer.fit` stopped: (.*)", log)]
    load = os.getloadavg()[2]

    result = {
        "command": " ".join(["python", "-m", "lit_llm.cli", *cmd[3:]]),
        "wall_time_s": round(wall, 1),
        "test_entity_f1_micro_strict": report["micro"]["f1"],
        "test_entity_precision_micro_strict": report["micro"]["precision"],
        "test_entity_recall_micro_strict": report["micro"]["recall"],
        "test_entity_f1_micro_default": report.get("micro_default", {}).get("f1"),
        "test_entity_f1_macro_strict": report["macro"]["f1"],
        "test_token_accuracy": report["accuracy"],
        "per_type": report["per_type"],
        "best_checkpoint": steps[-1] if steps else None,
        "fit_stopped_by": stopped[-1] if stopped else None,
        "load_average_15min": round(load, 1),
        "run_dir": str(run_dir),
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "cpus": torch.get_num_threads(), "platform": platform.platform()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ner_wnut16.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = "\n".join(
        f"| {t} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {int(r['support'])} |"
        for t, r in report["per_type"].items()
    )
    md = f"""# NER: all-MiniLM-L6-v2 on WNUT-16 (CPU)

Command (after `scripts/prepare_data.py` and `scripts/prepare_wnut16.py`, seed 42 split 80/10/10 by sentence):

```
.venv/bin/python scripts/bench_ner_wnut16.py -- {' '.join(args.overrides)}
# runs: {result['command']}
```

| metric (test split) | value |
|---|---|
| entity F1, micro, strict (seqeval mode="strict") | **{result['test_entity_f1_micro_strict']:.4f}** |
| entity precision / recall, micro, strict | {result['test_entity_precision_micro_strict']:.4f} / \
{result['test_entity_recall_micro_strict']:.4f} |
| entity F1, micro, seqeval default mode (conlleval chunking) | {result['test_entity_f1_micro_default']:.4f} |
| entity F1, macro over types, strict | {result['test_entity_f1_macro_strict']:.4f} |
| token accuracy | {result['test_token_accuracy']:.4f} |
| wall time (fit + validation + test, incl. start-up) | {wall / 60:.1f} min |

Per entity type (strict):

| type | precision | recall | F1 | support |
|---|---|---|---|---|
{rows}

Machine: 2 CPU cores shared with other jobs (15-minute load average {load:.1f} at the end), torch {torch.__version__}.
Fit stopped by: {result['fit_stopped_by']}. Best checkpoint: `{result['best_checkpoint']}`.
"""
    (args.out / "ner_wnut16.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
