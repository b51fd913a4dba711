"""Helpers of the export tests: a user's own LightningModule, and logits of exported models in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["good movie", "the film was really bad", "dull story and awful acting"]


class UserClassifier(pl.LightningModule):
    """A user's LightningModule (not lit-llm's) holding an HF model in ``.model``; ``data_dir`` is a Path
    hyper-parameter, which the checkpoint loader admits through its allowlist."""

    def __init__(self, model_dir: str, num_labels: int = 2, data_dir: Path | None = None, lr: float = 1e-2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=num_labels)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.model(**batch).loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


def fresh_process_logits(model_dirs: list[Path], texts: list[str] = TEXTS) -> list[dict]:
    """For each exported directory, in a new interpreter: ``from_pretrained`` model + tokenizer, logits of ``texts``
    and the label map. Returns ``[{"logits": [[...]], "id2label": {...}}, ...]``."""
    script = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
        "out = []\n"
        "for d in json.loads(sys.argv[1]):\n"
        "    model = AutoModelForSequenceClassification.from_pretrained(d).eval()\n"
        "    enc = AutoTokenizer.from_pretrained(d)(json.loads(sys.argv[2]), padding=True, return_tensors='pt')\n"
        "    with torch.no_grad():\n"
        "        logits = model(**enc).logits\n"
        "    out.append({'logits': logits.tolist(), 'id2label': model.config.id2label})\n"
        "print('RESULT' + json.dumps(out))\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps([str(d) for d in model_dirs]), json.dumps(texts)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def in_memory_logits(hf_model: torch.nn.Module, tokenizer_dir: Path, texts: list[str] = TEXTS) -> torch.Tensor:
    """Logits of the model as it is in this process, on the same tokenization as :func:`fresh_process_logits`."""
    enc = AutoTokenizer.from_pretrained(tokenizer_dir)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return hf_model.eval()(**enc).logits


def tiny_classifier_config(model_dir: Path, csvs: dict[str, Path], callbacks: list[dict], *, max_steps: int,
                           val_check_interval: int, batch_size: int = 16) -> dict:
    """A `lit-llm fit` config of a SequenceClassifier on the tiny model and the sentiment CSVs, as a user writes it
    (no logger, one validation batch, AdamW at lr 0.01)."""
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": max_steps, "val_check_interval": val_check_interval,
            "limit_val_batches": 1, "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
            "callbacks": callbacks,
        },
        "model": {"class_path": "lit_llm.modules.SequenceClassifier",
                  "init_args": {"model": str(model_dir), "optimizer": {
                      "class_path": "torch.optim.AdamW", "init_args": {"lr": 0.01}}}},
        "data": {"class_path": "lit_llm.datamodules.TextClassificationDataModule",
                 "init_args": {"tokenizer": str(model_dir), "train_file": str(csvs["train"]),
                               "validation_file": str(csvs["val"]), "batch_size": batch_size}},
    }
