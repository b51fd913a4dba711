"""Soak test: 2,000 optimizer steps of a tiny BERT classifier with every lit-llm callback on, on CPU, watching
the process's resident memory. Not part of the test suite (it takes minutes); its result lives in benchmarks/.

Pass: the resident memory's growth rate after warm-up (step 200), the least-squares slope of RSS against the
optimizer step, is at most 2 kB per step. A leak of a few kB a step (a tensor kept per step in a callback, a
growing list of metrics, an autograd graph held across steps) adds 7 MB over 1,800 steps: 1% of a 700 MB
process, which a band of +5% over the warm-up level (the former check) lets through, but a slope of 4 kB/step
against a no-leak slope of 0.3 kB/step (benchmarks/soak.json) is plain. ``--leak-kb 4`` checks the check.

Usage::

    .venv/bin/python scripts/soak.py                # 2,000 steps (~5 min on 2 cores)
    .venv/bin/python scripts/soak.py --steps 300    # quick look
    .venv/bin/python scripts/soak.py --leak-kb 4    # a deliberate 4 kB/step leak: must FAIL

Writes benchmarks/soak.{json,md,png}.
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402

WORDS = "the a movie film story was is really very acting script good great fun bad awful dull boring".split()
POSITIVE, NEGATIVE = ["good", "great", "fun"], ["bad", "awful", "dull", "boring"]
WARMUP_STEPS = 200
LEAK_LIMIT_BYTES_PER_STEP = 2048  # half the 4 kB/step leak the soak must catch; no-leak runs grow ~0.3 kB/step


@dataclass(frozen=True)
class Growth:
    """Least-squares fit of resident memory against the optimizer step, after warm-up.

    ``slope`` is bytes per step, ``stderr`` its standard error, ``span`` the steps covered.
    """

    slope: float
    stderr: float
    points: int
    span: int

    @property
    def total_bytes(self) -> float:
        return self.slope * self.span


def rss_growth(steps: Sequence[int], rss: Sequence[float], warmup_step: int) -> Growth:
    """The slope (bytes per step) of ``rss`` against ``steps`` from ``warmup_step`` on, by least squares.

    Raises:
        ValueError: fewer than 3 points after warm-up (no slope and error to fit).

    Example::
        rss_growth([200, 210, 220], [7e8, 7e8 + 4e4, 7e8 + 8e4], 200).slope  # 4000.0
    """
    pts = [(float(s), float(r)) for s, r in zip(steps, rss) if s >= warmup_step]
    n = len(pts)
    if n < 3:
        raise ValueError(f"rss_growth: {n} points after step {warmup_step}; run more steps (at least 3 to fit).")
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
    residual = sum((y - my - slope * (x - mx)) ** 2 for x, y in pts)
    stderr = math.sqrt(residual / (n - 2) / sxx)
    return Growth(slope, stderr, n, int(pts[-1][0] - pts[0][0]))


def leaks(growth: Growth, limit: float = LEAK_LIMIT_BYTES_PER_STEP) -> bool:
    """True when memory grows faster than ``limit`` bytes per step."""
    return growth.slope > limit


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class MemoryTrace(pl.Callback):
    """Resident memory after every optimizer step."""

    def __init__(self, leak_kb: int = 0) -> None:
        self.steps: list[int] = []
        self.rss: list[int] = []
        self._last = -1
        self.leak_kb = leak_kb
        self._leaked: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step != self._last:
            self._last = trainer.global_step
            if self.leak_kb:  # the instrument's own check: a deliberate leak must fail the soak
                self._leaked.append(torch.ones(self.leak_kb * 256))
            self.steps.append(trainer.global_step)
            self.rss.append(rss_bytes())


def make_assets(root: Path, n_train: int) -> dict[str, Path]:
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    tokenizer = BertTokenizer(vocab=vocab, model_max_length=64)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2,
                        id2label={0: "fresh", 1: "rotten"}, label2id={"fresh": 0, "rotten": 1})
    paths = {"student": root / "student", "teacher": root / "teacher"}
    for name, seed in (("student", 0), ("teacher", 1)):
        torch.manual_seed(seed)
        BertForSequenceClassification(config).save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
    rng = random.Random(0)
    for split, n in (("train", n_train), ("val", 64)):
        path = root / f"{split}.csv"
        with path.open("w") as f:
            f.write("text,label\n")
            for _ in range(n):
                label = rng.choice(["fresh", "rotten"])
                words = rng.sample(WORDS[:11], 5) + [rng.choice(POSITIVE if label == "fresh" else NEGATIVE)]
                rng.shuffle(words)
                f.write(f"{' '.join(words)},{label}\n")
        paths[split] = path
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks"))
    parser.add_argument("--leak-kb", type=int, default=0, help="leak this many kB a step (checks the check)")
    args = parser.parse_args(argv)
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from lit_llm.callbacks import (
        DistillationTeacher,
        ExactResume,
        GlobalBatchSize,
        Int8Quantization,
        LowRankFactorization,
        Pruning,
        StopOnNonFiniteLoss,
        TransformerThroughputMonitor,
        WarmupSchedule,
    )
    from lit_llm.training.checkpointing import AtomicCheckpointIO
    from lit_llm.datamodules import TextClassificationDataModule
    from lit_llm.modules import SequenceClassifier

    torch.set_num_threads(args.threads)
    pl.seed_everything(0, verbose=False)
    root = Path(tempfile.mkdtemp(prefix="lit_llm_soak_"))
    atexit.register(shutil.rmtree, root, True)  # its checkpoints and logs; the results go to --out
    paths = make_assets(root, n_train=512)
    trace = MemoryTrace(args.leak_kb)
    callbacks = [
        WarmupSchedule(warmup=100),
        GlobalBatchSize(global_batch_size=16),
        TransformerThroughputMonitor(window_size=50),
        LowRankFactorization(rank=8, patterns=[r"intermediate\.dense"], report=False),
        # the pruned zeros ship inside LowRankFactorization's artifact; Pruning's own cannot hold factorized layers
        Pruning(amount=0.5, start_step=0, end_step=args.steps // 2, frequency=50, patterns=[r"attention"],
                report=False, export_artifact=False),
        DistillationTeacher(teacher=str(paths["teacher"]), temperature=2.0, alpha=0.5),
        Int8Quantization(backend="onnxruntime", apply_on="fit_end", qat_start=0.8, report=False),
        StopOnNonFiniteLoss(),
        ExactResume(),
        ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=100, save_last=True),
        EarlyStopping(monitor="val/loss", patience=1000),
        LearningRateMonitor(logging_interval="step"),
        trace,
    ]
    model = SequenceClassifier(model=str(paths["student"]),
                               optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3))
    data = TextClassificationDataModule(tokenizer=str(paths["student"]), train_file=str(paths["train"]),
                                        validation_file=str(paths["val"]), batch_size=8)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=args.steps, val_check_interval=100,
                         check_val_every_n_epoch=None, log_every_n_steps=10, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=root, logger=CSVLogger(root / "logs"),
                         callbacks=callbacks, plugins=[AtomicCheckpointIO()])
    started = time.time()
    trainer.fit(model, datamodule=data)
    elapsed = time.time() - started
    if trainer.global_step < args.steps:
        raise SystemExit(f"soak: the run stopped at step {trainer.global_step} of {args.steps}")

    steps, rss = trace.steps, trace.rss
    warm_index = next(i for i, s in enumerate(steps) if s >= min(WARMUP_STEPS, args.steps // 4))
    base = rss[warm_index]
    tail = rss[max(warm_index, len(rss) - 200):]
    growth_end = rss[-1] / base - 1
    growth_max = max(tail) / base - 1
    growth = rss_growth(steps, rss, steps[warm_index])
    passed = not leaks(growth)
    result = {
        "command": "python scripts/soak.py" + (f" --steps {args.steps}" if args.steps != 2000 else "")
        + (f" --leak-kb {args.leak_kb}" if args.leak_kb else ""),
        "steps": args.steps, "threads": args.threads, "elapsed_s": round(elapsed, 1),
        "warmup_step": steps[warm_index], "rss_mb_after_warmup": round(base / 2**20, 1),
        "rss_mb_end": round(rss[-1] / 2**20, 1), "rss_mb_max_last_200": round(max(tail) / 2**20, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "growth_end": round(growth_end, 4), "growth_max_last_200": round(growth_max, 4),
        "slope_bytes_per_step": round(growth.slope, 1), "slope_stderr": round(growth.stderr, 1),
        "slope_limit_bytes_per_step": LEAK_LIMIT_BYTES_PER_STEP, "passed": passed,
        "callbacks": [type(c).__name__ for c in callbacks if c is not trace],
        "torch": torch.__version__, "python": sys.version.split()[0],
        "trace": {"step": steps[::10], "rss_mb": [round(r / 2**20, 2) for r in rss[::10]]},
    }
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.plot(steps, [r / 2**20 for r in rss], lw=1)
        ax.axvline(steps[warm_index], color="gray", ls="--", lw=0.8, label="end of warm-up")
        limit = [(base + LEAK_LIMIT_BYTES_PER_STEP * (s - steps[warm_index])) / 2**20 for s in steps[warm_index:]]
        ax.plot(steps[warm_index:], limit, color="red", ls=":", lw=0.8, label="growth limit (2 kB/step)")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("resident memory (MiB)")
        ax.set_title("Soak: tiny BERT, every lit-llm callback on (CPU)")
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(out / "soak.png", dpi=110)
    except ImportError:
        pass
    lines = [
        "# Soak test: 2,000 steps with every callback on, resident memory",
        "",
        f"Command: `{result['command']}` ({args.threads} thread, {elapsed / 60:.1f} min, torch {torch.__version__}).",
        "",
        f"Callbacks: {', '.join(result['callbacks'])}; checkpoints every 100 steps, validation every 100 steps.",
        "",
        "| resident memory | MiB |",
        "|---|---|",
        f"| after warm-up (step {steps[warm_index]}) | {result['rss_mb_after_warmup']} |",
        f"| at the end (step {steps[-1]}) | {result['rss_mb_end']} |",
        f"| max over the last 200 steps | {result['rss_mb_max_last_200']} |",
        f"| peak of the process | {result['peak_rss_mb']} |",
        "",
        f"Growth after warm-up: {growth.slope:,.0f} ± {1.96 * growth.stderr:,.0f} bytes per optimizer step "
        f"(least squares over {growth.points} steps, 95% interval; limit {LEAK_LIMIT_BYTES_PER_STEP:,} B/step, "
        f"half the 4 kB/step leak the soak must catch): **{'pass' if passed else 'FAIL'}**. "
        f"For reference: {growth_end:+.2%} at the end, {growth_max:+.2%} at most over the last 200 steps.",
        "",
        "![resident memory per step](soak.png)",
        "",
    ]
    (out / "soak.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
