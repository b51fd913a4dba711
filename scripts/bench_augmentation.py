#!/usr/bin/env python
"""Does on-the-fly text augmentation help the main job when labelled data is scarce?

Low-resource subsets of the main job (all-MiniLM-L6-v2 on Rotten Tomatoes, split by movie): 500 and 2,000
training snippets drawn at random (seeded) from the training split, the full validation and test splits. For each
size and each of 5 seeds, two runs that differ only in the datamodule's ``augmentation``: none, and EDA's token
edits (``swap``, ``delete``, ``insert``; p=0.5, rate=0.1, EDA's default alpha), fixed before any run and never
tuned. Same subset, same initialisation, same batch order within a seed (paired runs). The main job's recipe
otherwise: AdamW lr 1e-4, weight decay 0.01, WarmupSchedule (10% warm-up, linear decay), max_length 64, batch 32;
6 epochs at 500 snippets, 3 at 2,000. The checkpoint kept is the best on validation accuracy (validated each
epoch); the test split is scored once, on that checkpoint. Reported per size and condition: validation (best)
and test accuracy, mean, sample standard deviation, min and max over seeds; and the paired difference
(augmented - plain) per seed.

Synonym and contextual replacement are not measured: no synonym lexicon is installed here (WordNet needs nltk)
and all-MiniLM-L6-v2 has no masked-LM head.

Usage::
    python scripts/bench_augmentation.py                 # the full measurement (see --help for the sizes)
    python scripts/bench_augmentation.py --smoke         # seconds: 2 seeds of 32 snippets, 64 eval rows, 1 epoch

Writes ``benchmarks/augmentation.json`` and ``benchmarks/augmentation.md`` (``--out``); a smoke run writes
into a temporary directory unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "data" / "models" / "all-MiniLM-L6-v2"
DATA = REPO / "data" / "rotten_tomatoes"
AUGMENTATION = {"ops": ["swap", "delete", "insert"], "p": 0.5, "rate": 0.1}
COMMAND = "python scripts/bench_augmentation.py"


def write_subset(rows: list[dict[str, str]], n: int, seed: int, path: Path) -> Path:
    """A seeded random sample of ``n`` training rows, as a CSV with the main job's columns."""
    import random

    sample = random.Random(seed).sample(rows, n)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows({"text": r["text"], "label": r["label"]} for r in sample)
    return path


def head(path: Path, n: int | None, out: Path) -> Path:
    """The first ``n`` rows of a CSV (all when None)."""
    if n is None:
        return path
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))[:n]
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows({"text": r["text"], "label": r["label"]} for r in rows)
    return out


def one_run(train: Path, val: Path, test: Path, *, seed: int, epochs: int, augment: bool, work: Path) -> dict:
    """Fine-tune on ``train``; keep the best validation checkpoint; test it once."""
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lit_llm.callbacks import WarmupSchedule
    from lit_llm.datamodules import TextClassificationDataModule
    from lit_llm.modules import SequenceClassifier
    from lit_llm.text.augmentation import TextAugmentation

    pl.seed_everything(seed, verbose=False)
    dm = TextClassificationDataModule(
        str(MODEL), train_file=str(train), validation_file=str(val), test_file=str(test), max_length=64,
        batch_size=32, eval_batch_size=128, seed=seed,
        augmentation=TextAugmentation(**AUGMENTATION) if augment else None,  # type: ignore[arg-type]
    )
    model = SequenceClassifier(
        str(MODEL), export=False, report_dir=str(work / "reports"),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01),
    )
    best = ModelCheckpoint(dirpath=work / "ckpt", monitor="val/accuracy", mode="max", save_top_k=1)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=work,
        callbacks=[WarmupSchedule(warmup=0.1, decay="linear", log=False), best],
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    val_acc = float(best.best_model_score)  # type: ignore[arg-type]
    [scores] = trainer.test(model, datamodule=dm, ckpt_path=best.best_model_path, verbose=False)
    return {"val_accuracy": val_acc, "test_accuracy": float(scores["test/accuracy"]),
            "steps": int(trainer.global_step), "seconds": round(time.perf_counter() - start, 1)}


def summarize(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def report(results: list[dict], args: argparse.Namespace, seconds: float) -> tuple[dict, str]:
    summary: dict[str, Any] = {}
    lines = [
        "# Text augmentation on low-resource subsets of the main job",
        "",
        f"Command: `{COMMAND}{' --smoke' if args.smoke else ''}` ({seconds / 60:.1f} min on {platform.machine()}, "
        f"{os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}).",
        "",
        f"all-MiniLM-L6-v2 on Rotten Tomatoes (by-movie splits); training subsets drawn per seed; augmentation "
        f"`{json.dumps(AUGMENTATION)}` (EDA's token edits), fixed in advance. Best-on-validation checkpoint, "
        "tested once. Accuracy, mean ± sample std over seeds [min, max].",
        "",
        "| train snippets | augmentation | validation accuracy | test accuracy | paired test diff (aug - plain) |",
        "|---:|---|---|---|---|",
    ]
    for n in args.sizes:
        by = {aug: [r for r in results if r["size"] == n and r["augment"] == aug] for aug in (False, True)}
        diffs = [a["test_accuracy"] - p["test_accuracy"] for p, a in zip(by[False], by[True])]
        val_diffs = [a["val_accuracy"] - p["val_accuracy"] for p, a in zip(by[False], by[True])]
        for aug in (False, True):
            val = summarize([r["val_accuracy"] for r in by[aug]])
            test = summarize([r["test_accuracy"] for r in by[aug]])
            summary[f"{n}/{'augmented' if aug else 'plain'}"] = {"val_accuracy": val, "test_accuracy": test}
            diff = summarize(diffs) if aug else None
            lines.append(
                f"| {n:,} | {'swap/delete/insert' if aug else 'none'} | {val['mean']:.4f} ± {val['std']:.4f} "
                f"[{val['min']:.4f}, {val['max']:.4f}] | {test['mean']:.4f} ± {test['std']:.4f} "
                f"[{test['min']:.4f}, {test['max']:.4f}] | "
                + (f"{diff['mean']:+.4f} ± {diff['std']:.4f} ({sum(d > 0 for d in diffs)}/{len(diffs)} seeds better)"
                   if diff else "")
                + " |"
            )
        summary[f"{n}/paired_test_diff"] = summarize(diffs)
        summary[f"{n}/paired_val_diff"] = summarize(val_diffs)
    lines += ["", "Per run: see the JSON file (`runs`)."]
    return summary, "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000], help="training subset sizes")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per size and condition")
    parser.add_argument("--epochs", type=int, nargs="+", default=[6, 3], help="epochs per size, in --sizes order")
    parser.add_argument("--eval_limit", type=int, default=None, help="use only the first N val / test rows")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default benchmarks/)")
    parser.add_argument("--smoke", action="store_true", help="seconds: 2 seeds of 32 snippets, 64 eval rows, 1 epoch")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.seeds, args.epochs, args.eval_limit = [32], 2, [1], 64
    if len(args.epochs) != len(args.sizes):
        parser.error(f"--epochs needs one value per size ({len(args.sizes)}), got {args.epochs}")
    if not (MODEL / "config.json").is_file() or not (DATA / "train.csv").is_file():
        print(f"missing {MODEL} or {DATA}: run `python scripts/prepare_data.py` (make data) first", file=sys.stderr)
        return 2
    out = args.out or (Path(tempfile.mkdtemp(prefix="bench_augmentation_")) if args.smoke else REPO / "benchmarks")
    out.mkdir(parents=True, exist_ok=True)
    with (DATA / "train.csv").open(encoding="utf-8", newline="") as f:
        train_rows = list(csv.DictReader(f))

    results, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_augmentation_") as tmp:
        work = Path(tmp)
        val = head(DATA / "val.csv", args.eval_limit, work / "val.csv")
        test = head(DATA / "test.csv", args.eval_limit, work / "test.csv")
        for n, epochs in zip(args.sizes, args.epochs):
            for seed in range(args.seeds):
                train = write_subset(train_rows, n, seed, work / f"train_{n}_{seed}.csv")
                for augment in (False, True):
                    run_dir = work / f"run_{n}_{seed}_{int(augment)}"
                    result = one_run(train, val, test, seed=seed, epochs=epochs, augment=augment, work=run_dir)
                    results.append({"size": n, "seed": seed, "augment": augment, "epochs": epochs, **result})
                    print(json.dumps(results[-1]), flush=True)
    seconds = time.perf_counter() - start
    summary, markdown = report(results, args, seconds)
    stem = "augmentation_smoke" if args.smoke else "augmentation"
    (out / f"{stem}.json").write_text(json.dumps(
        {"command": COMMAND + (" --smoke" if args.smoke else ""), "augmentation": AUGMENTATION,
         "seconds": round(seconds, 1), "summary": summary, "runs": results}, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown)
    print(markdown)
    print(f"wrote {out / (stem + '.json')} and {out / (stem + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
