"""Soak test: 2,000 optimizer steps of a tiny BERT classifier with every lit-llm callback on, on CPU, watching
the process's resident memory. Not part of the test suite (it takes minutes); its result lives in benchmarks/.

Pass: resident memory at the end is at most 5% above its level after warm-up (step 200), and the maximum over
the last 200 steps is too. A leak of even a few kB a step (a tensor kept per step in a callback, a growing list
of metrics, an autograd graph held across steps) shows up over 1,800 steps.

Usage::

    .venv/bin/python scripts/soak.py                # 2,000 steps (~5 min on 2 cores)
    .venv/bin/python scripts/soak.py --steps 300    # quick look

Writes benchmarks/soak.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer  # noqa: E402

from lit_llm.callbacks import (  # noqa: E402
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
from lit_llm.checkpointing import AtomicCheckpointIO  # noqa: E402
from lit_llm.datamodules import TextClassificationDataModule  # noqa: E402
from lit_llm.modules import SequenceClassifier  # noqa: E402

WORDS = "the a movie film story was is really very acting script good great fun bad awful dull boring".split()
POSITIVE, NEGATIVE = ["good", "great", "fun"], ["bad", "awful", "dull", "boring"]
WARMUP_STEPS = 200


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
    torch.set_num_threads(args.threads)
    pl.seed_everything(0, verbose=False)
    root = Path(tempfile.mkdtemp(prefix="lit_llm_soak_"))
    paths = make_assets(root, n_train=512)
    trace = MemoryTrace(args.leak_kb)
    callbacks = [
        WarmupSchedule(warmup=100),
        GlobalBatchSize(global_batch_size=16),
        TransformerThroughputMonitor(window_size=50),
        LowRankFactorization(rank=8, patterns=[r"intermediate\.dense"], report=False),
        Pruning(amount=0.5, start_step=0, end_step=args.steps // 2, frequency=50, patterns=[r"attention"],
                report=False),
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
    passed = growth_end <= 0.05 and growth_max <= 0.05
    result = {
        "command": "python scripts/soak.py" + (f" --steps {args.steps}" if args.steps != 2000 else "")
        + (f" --leak-kb {args.leak_kb}" if args.leak_kb else ""),
        "steps": args.steps, "threads": args.threads, "elapsed_s": round(elapsed, 1),
        "warmup_step": steps[warm_index], "rss_mb_after_warmup": round(base / 2**20, 1),
        "rss_mb_end": round(rss[-1] / 2**20, 1), "rss_mb_max_last_200": round(max(tail) / 2**20, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "growth_end": round(growth_end, 4), "growth_max_last_200": round(growth_max, 4), "passed": passed,
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
        ax.axhline(base / 2**20 * 1.05, color="red", ls=":", lw=0.8, label="+5% limit")
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
        f"Growth after warm-up: {growth_end:+.2%} at the end, {growth_max:+.2%} at most (limit +5%): "
        f"**{'pass' if passed else 'FAIL'}**.",
        "",
        "![resident memory per step](soak.png)",
        "",
    ]
    (out / "soak.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
