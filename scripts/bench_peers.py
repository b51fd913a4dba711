"""lit-llm side by side with what a user would pick instead, on the same data, in one interleaved run.

Three comparisons, each runner in a fresh process (start-up, imports and tokenization count for all alike), the
runners of a task interleaved and their order rotated every repeat so machine noise hits all of them:

- ``classification`` (the main job): ``lit-llm fit --config configs/finetune/minilm_rotten_tomatoes.yaml
  --test_after_fit true`` vs the HF ``Trainer`` vs a plain PyTorch loop. The recipe is read from that config, so
  the peers get the same split, model, max length, batch, learning rate, weight decay, warm-up, clipping, epochs,
  validation twice an epoch keeping the best (with the same early-stopping patience) and one test pass, and
  length-grouped training batches when the config groups them (the HF Trainer's own
  ``train_sampling_strategy="group_by_length"``, transformers' ``LengthGroupedSampler`` in the plain loop);
  ``hf_trainer_defaults`` is the HF Trainer with its default random batches. lit-llm
  logs to CSV instead of the config's W&B (the peers log nothing remote either). Reported:
  test accuracy, macro-F1, the wall time of the whole command, and training tokens/s (non-padding training
  tokens x epochs / wall time). Goal: lit-llm at least as accurate as the HF Trainer in at most 0.9x its time.
- ``ner`` (WNUT-16): ``lit-llm fit --config configs/finetune/minilm_wnut16.yaml --test_after_fit true`` vs the HF
  Trainer with ``DataCollatorForTokenClassification`` on that config's recipe as for classification (its precision
  and length-grouped batches included), first-sub-word labels, scored by seqeval (strict, IOB2;
  lit-llm's own report uses ``lit_llm.text.entities``, which tests/text/test_entities.py checks equal to seqeval);
  ``hf_trainer_defaults`` as for classification.
- ``pretrain``, two views, each labelled: (a) framework overhead, like for like: a raw loop doing exactly
  MaskedLanguageModel's work (``lit_llm.text.masking.mask_tokens``, the LM head on the masked positions only, the same
  token cross-entropy) vs ``MaskedLanguageModel`` in a Lightning Trainer, goal >= 0.97x tokens/s; (b) what a user
  gets by default: ``MaskedLanguageModel``'s defaults vs the HF Trainer with ``DataCollatorForLanguageModeling``'s
  defaults, goal >= 1.5x tokens/s at the same held-out loss after the same tokens (one evaluation function, fixed
  masks, for both).

Every figure is a median over ``--repeats`` with its spread (max - min) / median, so a claimed difference can be
checked against the noise. ``--smoke`` runs every path on a few dozen examples in about two minutes (results under
``$TMPDIR``, not ``benchmarks/``).

Usage::

    .venv/bin/python scripts/bench_peers.py --smoke
    .venv/bin/python scripts/bench_peers.py --tasks classification ner pretrain --repeats 3   # see bench notes

Writes ``benchmarks/peers.json`` and ``.md`` (``peers_<task>.*`` when only some tasks run, so tasks run one after
another keep their own files). Needs ``accelerate`` (HF Trainer) and ``seqeval``.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import os
import platform
import random
import re
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")

CLS_CONFIG = "configs/finetune/minilm_rotten_tomatoes.yaml"
NER_CONFIG = "configs/finetune/minilm_wnut16.yaml"
RUNNERS = {
    "classification": ("lit_llm", "hf_trainer", "hf_trainer_defaults", "plain_pytorch"),
    "ner": ("lit_llm", "hf_trainer", "hf_trainer_defaults"),
    "pretrain": ("raw_like_for_like", "lit_llm", "hf_trainer_defaults"),
}
PRETRAIN_BATCH, PRETRAIN_SEQ, PRETRAIN_LR = 16, 128, 1e-4


# ------------------------------------------------------------------------------------------------------- recipes
def recipe(config_path: str) -> dict[str, Any]:
    """The numbers of a ``lit-llm fit`` config that the peers must share."""
    import yaml

    cfg = yaml.safe_load((ROOT / config_path).read_text())
    trainer, model, data = cfg["trainer"], cfg["model"]["init_args"], cfg["data"]["init_args"]
    optim = model.get("optimizer", {}).get("init_args", {})
    callbacks = {c["class_path"].rsplit(".", 1)[-1]: c.get("init_args", {}) for c in trainer.get("callbacks", [])}
    return {
        "config": config_path,
        "seed": int(cfg.get("seed_everything", 0)),
        "model": str(ROOT / model["model"]),
        "tokenizer": str(ROOT / data["tokenizer"]),
        "files": {split: str(ROOT / data[f"{split}_file"]) for split in ("train", "validation", "test")},
        "text_field": data.get("text_field", "text"),
        "label_field": data.get("label_field", "label"),
        "max_length": int(data["max_length"]),
        "batch_size": int(data["batch_size"]),
        "eval_batch_size": int(data.get("eval_batch_size", data["batch_size"])),
        "lr": float(optim.get("lr", 1e-3)),
        "weight_decay": float(optim.get("weight_decay", 0.01)),
        "epochs": int(trainer["max_epochs"]),
        "evals_per_epoch": round(1 / float(trainer.get("val_check_interval", 1.0))),
        "clip": float(trainer.get("gradient_clip_val") or 0.0),
        "warmup": float(callbacks.get("WarmupSchedule", {}).get("warmup", 0.0)),
        "patience": int(callbacks.get("EarlyStopping", {}).get("patience", 10**6)),
        "precision": _precision(cfg),
        "group_by_length": bool(data.get("group_by_length", False)),
        # lit_llm.callbacks.EMA: the plain loop keeps the same average; the HF Trainer has no such option.
        "ema_decay": float(callbacks["EMA"].get("decay", 0.999)) if "EMA" in callbacks else None,
    }


def _precision(cfg: dict[str, Any]) -> str:
    """The config's precision as ``lit-llm fit`` resolves it on the CPU, where every runner runs
    (``fastest_precision: true`` picks by hardware)."""
    from lit_llm.commands.trainer_defaults import fastest_precision

    chosen = fastest_precision("cpu")[0] if cfg.get("fastest_precision") else None
    return str(chosen or cfg["trainer"].get("precision") or "32-true")


def _subset_csv(src: str, dst: Path, n: int) -> str:
    with open(src, newline="") as f:
        rows = list(csv.reader(f))
    with dst.open("w", newline="") as f:
        csv.writer(f).writerows(rows[: n + 1])
    return str(dst)


def _subset_conll(src: str, dst: Path, n: int) -> str:
    text = Path(src).read_text().strip().split("\n\n")
    dst.write_text("\n\n".join(text[:n]) + "\n\n")
    return str(dst)


def smoke_recipe(r: dict[str, Any], work: Path, conll: bool) -> dict[str, Any]:
    """The same recipe on a few dozen examples, one epoch, short sequences."""
    cut = _subset_conll if conll else _subset_csv
    sizes = {"train": 96, "validation": 32, "test": 32}
    files = {s: cut(r["files"][s], work / f"smoke_{s}{'.conll' if conll else '.csv'}", n) for s, n in sizes.items()}
    return {**r, "files": files, "epochs": 1, "max_length": 32}


# ------------------------------------------------------------------------------------------------------- metrics
def accuracy_macro_f1(gold: list[int], pred: list[int], n_labels: int) -> tuple[float, float]:
    acc = sum(g == p for g, p in zip(gold, pred)) / max(len(gold), 1)
    f1s = []
    for k in range(n_labels):
        tp = sum(g == k and p == k for g, p in zip(gold, pred))
        fp = sum(g != k and p == k for g, p in zip(gold, pred))
        fn = sum(g == k and p != k for g, p in zip(gold, pred))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return acc, sum(f1s) / n_labels


def _warmup_steps(n_train: int, r: dict[str, Any]) -> int:
    """The recipe's warm-up fraction in optimizer steps (transformers 5 takes steps, not a ratio)."""
    return int(math.ceil(n_train / r["batch_size"]) * r["epochs"] * r["warmup"])


def _linear_warmup(optimizer: Any, total: int, warmup: float) -> Any:
    import torch

    warm = max(1, int(total * warmup))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))


# ------------------------------------------------------------------------------------------------ classification
def _cls_data(r: dict[str, Any]) -> tuple[Any, dict[str, Any], list[str]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(r["tokenizer"])
    rows = {}
    for split, path in r["files"].items():
        with open(path, newline="") as f:
            rows[split] = list(csv.DictReader(f))
    labels = sorted({row[r["label_field"]] for row in rows["train"]})
    enc = {}
    for split, items in rows.items():
        e = tok([row[r["text_field"]] for row in items], truncation=True, max_length=r["max_length"])
        enc[split] = [{"input_ids": ids, "attention_mask": m, "labels": labels.index(row[r["label_field"]])}
                      for ids, m, row in zip(e["input_ids"], e["attention_mask"], items)]
    return tok, enc, labels


def padding_cells(r: dict[str, Any], seed: int = 0) -> dict[str, float]:
    """Batch cells (batch x padded length) per real training token in one epoch, with random batches and with
    lit-llm's length-grouped ones, for the recipe's training split and batch size."""
    from lit_llm.datamodules import ResumableSampler

    _, enc, _ = _cls_data(r)
    lengths = [len(x["input_ids"]) for x in enc["train"]]
    out = {}
    for name, grouped in (("random_batches", None), ("length_grouped", lengths)):
        sampler = ResumableSampler(lengths, shuffle=True, seed=seed, lengths=grouped, batch_size=r["batch_size"])
        order = list(sampler)
        batches = [order[k : k + r["batch_size"]] for k in range(0, len(order), r["batch_size"])]
        out[name] = sum(max(lengths[i] for i in b) * len(b) for b in batches) / sum(lengths)
    # validation at the eval batch: the file's order against lit-llm's sort_eval_by_length
    val = [len(x["input_ids"]) for x in enc["validation"]]
    step = r["eval_batch_size"]
    for name, order in (("validation_file_order", val), ("validation_sorted", sorted(val))):
        chunks = [order[k : k + step] for k in range(0, len(order), step)]
        out[name] = sum(max(c) * len(c) for c in chunks) / sum(val)
    return out


def _train_tokens(enc: dict[str, Any], r: dict[str, Any]) -> int:
    return sum(len(x["input_ids"]) for x in enc["train"]) * r["epochs"]


def run_cls_lit_llm(r: dict[str, Any], work: Path) -> dict[str, Any]:
    """The user's command, with the recipe's data files and epochs; W&B off as for the peers."""
    _, enc, _ = _cls_data(r)  # tokens count only; lit-llm tokenizes on its own inside the timed command
    overrides = [f"--data.init_args.{s}_file={p}" for s, p in r["files"].items()] + [
        f"--trainer.max_epochs={r['epochs']}", f"--data.init_args.max_length={r['max_length']}",
    ]
    return _lit_llm_command(r["config"], overrides, work, "classification_report.json", _train_tokens(enc, r),
                            lambda rep: {"accuracy": rep["accuracy"], "macro_f1": rep["macro avg"]["f1-score"]})


def _lit_llm_command(config: str, overrides: list[str], work: Path, report_name: str, tokens: int, read) -> dict:
    # A CSV logger instead of the config's W&B one (the peers log nothing remote either); the configs'
    # LearningRateMonitor needs some logger.
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(work / "csv")}}
    cmd = [sys.executable, "-m", "lit_llm.cli", "fit", "--config", config, "--test_after_fit", "true",
           f"--trainer.logger={json.dumps(logger)}", f"--run_root={work / 'runs'}", "--run_name=peers", *overrides]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"lit-llm fit failed ({proc.returncode}): {proc.stderr[-3000:]}")
    reports = sorted((work / "runs").glob(f"**/{report_name}"), key=lambda p: p.stat().st_mtime)
    if not reports:
        raise RuntimeError(f"lit-llm fit wrote no {report_name} under {work / 'runs'}")
    return {**read(json.loads(reports[-1].read_text())), "wall_s": wall, "tokens_per_s": tokens / wall,
            **_loop_rate(proc.stdout), "command": " ".join(cmd[2:])}


_LOOP = re.compile(r"training loop ([\d.]+) s \(([\d,]+) batches, ([\d,]+) samples")
_STAGE = re.compile(r"(start-up|data setup|model setup|training loop|validation|fit end|test) ([\d.]+) s")


def _loop_rate(stdout: str) -> dict[str, float]:
    """From the run summary's ``time:`` line: each stage's seconds (``stage_<name>_s``), and the training loop's
    seconds and samples/s (validation excluded)."""
    line = next((x for x in reversed(stdout.splitlines()) if x.startswith("time:")), "")
    out = {f"stage_{name.replace(' ', '_').replace('-', '')}_s": float(sec) for name, sec in _STAGE.findall(line)}
    found = _LOOP.search(line)
    if found:
        seconds, samples = float(found[1]), int(found[3].replace(",", ""))
        out |= {"train_loop_s": seconds, "train_samples_per_s": samples / seconds}
    return out


def run_cls_hf_trainer(r: dict[str, Any], work: Path, defaults: bool = False) -> dict[str, Any]:
    """The HF Trainer on the recipe, length-grouped batches included (its own ``train_sampling_strategy=
    "group_by_length"``); with ``defaults``, random batches as it makes them by default."""
    import numpy as np
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        EarlyStoppingCallback,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    set_seed(r["seed"])
    tok, enc, labels = _cls_data(r)
    model = AutoModelForSequenceClassification.from_pretrained(
        r["model"], num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)})
    features_train = enc["train"]
    every = max(1, math.ceil(len(features_train) / r["batch_size"]) // r["evals_per_epoch"])

    def metrics(pred: Any) -> dict[str, float]:
        acc, f1 = accuracy_macro_f1(list(pred.label_ids), list(np.argmax(pred.predictions, -1)), len(labels))
        return {"accuracy": acc, "macro_f1": f1}

    args = TrainingArguments(
        output_dir=str(work / "hf"), per_device_train_batch_size=r["batch_size"],
        per_device_eval_batch_size=r["eval_batch_size"], learning_rate=r["lr"], weight_decay=r["weight_decay"],
        num_train_epochs=r["epochs"], warmup_steps=_warmup_steps(len(features_train), r),
        lr_scheduler_type="linear",
        max_grad_norm=r["clip"] or 0.0, eval_strategy="steps", eval_steps=every, save_strategy="steps",
        save_steps=every, save_total_limit=1, load_best_model_at_end=True, metric_for_best_model="accuracy",
        report_to=[], logging_strategy="no", use_cpu=True, disable_tqdm=True, seed=r["seed"],
        bf16=r["precision"].startswith("bf16"), dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if r["group_by_length"] and not defaults else "random",
    )
    trainer = Trainer(model=model, args=args, train_dataset=enc["train"], eval_dataset=enc["validation"],
                      data_collator=DataCollatorWithPadding(tok), compute_metrics=metrics,
                      callbacks=[EarlyStoppingCallback(early_stopping_patience=r["patience"])])
    trainer.train()
    test = trainer.predict(enc["test"]).metrics
    trainer.save_model(str(work / "hf_model"))
    return {"accuracy": test["test_accuracy"], "macro_f1": test["test_macro_f1"], "train_tokens": _train_tokens(enc, r)}


def run_cls_plain(r: dict[str, Any], work: Path) -> dict[str, Any]:
    """What a user writes by hand: the same recipe, validation twice an epoch, the best state tested; batches
    grouped by length with transformers' ``LengthGroupedSampler`` when the recipe groups them, and the weights
    averaged with torch's ``AveragedModel`` when the recipe has an EMA."""
    import copy

    import torch
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    from torch.utils.data import DataLoader
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding
    from transformers.trainer_pt_utils import LengthGroupedSampler

    torch.manual_seed(r["seed"])
    random.seed(r["seed"])
    tok, enc, labels = _cls_data(r)
    model = AutoModelForSequenceClassification.from_pretrained(r["model"], num_labels=len(labels))
    collate = DataCollatorWithPadding(tok)
    if r["group_by_length"]:
        sampler = LengthGroupedSampler(r["batch_size"], lengths=[len(x["input_ids"]) for x in enc["train"]])
        train = DataLoader(enc["train"], batch_size=r["batch_size"], sampler=sampler, collate_fn=collate)
    else:
        train = DataLoader(enc["train"], batch_size=r["batch_size"], shuffle=True, collate_fn=collate)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    # fused, as lit-llm and the HF Trainer run AdamW: the loop's own overhead is what is compared
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": r["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=r["lr"], fused=True)
    total = len(train) * r["epochs"]
    scheduler = _linear_warmup(optimizer, total, r["warmup"])
    every = max(1, len(train) // r["evals_per_epoch"])
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=r["precision"].startswith("bf16"))
    # The weights that are validated, kept and tested: an exponential average when the recipe has one.
    ema = (AveragedModel(model, use_buffers=True, multi_avg_fn=get_ema_multi_avg_fn(r["ema_decay"]))
           if r.get("ema_decay") is not None else None)
    served = ema.module if ema is not None else model

    def evaluate(split: str) -> tuple[float, float]:
        served.eval()
        gold, pred = [], []
        with torch.no_grad(), autocast:
            for batch in DataLoader(enc[split], batch_size=r["eval_batch_size"], collate_fn=collate):
                gold += batch.pop("labels").tolist()
                pred += served(**batch).logits.argmax(-1).tolist()
        model.train()
        return accuracy_macro_f1(gold, pred, len(labels))

    best, best_state, bad, step, samples, evaluating = -1.0, None, 0, 0, 0, 0.0
    model.train()
    loop_start = time.perf_counter()
    for _ in range(r["epochs"]):
        for batch in train:
            samples += len(batch["input_ids"])
            with autocast:
                loss = model(**batch).loss
            loss.backward()
            if r["clip"]:
                torch.nn.utils.clip_grad_norm_(model.parameters(), r["clip"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            if step % every == 0 or step == total:
                eval_start = time.perf_counter()
                acc, _ = evaluate("validation")
                evaluating += time.perf_counter() - eval_start
                if acc > best:
                    best, best_state, bad = acc, copy.deepcopy(served.state_dict()), 0
                else:
                    bad += 1
        if bad >= r["patience"]:
            break
    loop_s = time.perf_counter() - loop_start - evaluating  # less the model copies of the best state: noise
    served.load_state_dict(best_state)
    acc, f1 = evaluate("test")
    served.save_pretrained(work / "plain_model")
    return {"accuracy": acc, "macro_f1": f1, "train_tokens": _train_tokens(enc, r), "train_loop_s": loop_s,
            "train_samples_per_s": samples / loop_s}


# ---------------------------------------------------------------------------------------------------------- NER
def _ner_data(r: dict[str, Any]) -> tuple[Any, dict[str, Any], list[str]]:
    from transformers import AutoTokenizer

    from lit_llm.datamodules.conll import read_conll

    tok = AutoTokenizer.from_pretrained(r["tokenizer"])
    sentences = {split: read_conll(path) for split, path in r["files"].items()}
    types = sorted({t[2:] for s in sentences["train"] for t in s.tags if t != "O"})
    labels = ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]
    enc: dict[str, Any] = {}
    for split, items in sentences.items():
        e = tok([list(s.tokens) for s in items], is_split_into_words=True, truncation=True,
                max_length=r["max_length"])
        rows = []
        for i, s in enumerate(items):
            words, previous, ids = e.word_ids(i), None, []
            for w in words:  # the label on each word's first sub-word, -100 elsewhere
                ids.append(-100 if w is None or w == previous else
                           labels.index(s.tags[w]) if s.tags[w] in labels else 0)
                previous = w
            rows.append({"input_ids": e["input_ids"][i], "attention_mask": e["attention_mask"][i], "labels": ids,
                         "gold": list(s.tags), "word_ids": words})
        enc[split] = rows
    return tok, enc, labels


def run_ner_lit_llm(r: dict[str, Any], work: Path) -> dict[str, Any]:
    _, enc, _ = _ner_data(r)
    overrides = [f"--data.init_args.{s}_file={p}" for s, p in r["files"].items()] + [
        f"--trainer.max_epochs={r['epochs']}", f"--data.init_args.max_length={r['max_length']}",
        "--trainer.accelerator=cpu",  # the config says auto; the peers run on the CPU
    ]
    return _lit_llm_command(r["config"], overrides, work, "ner_report.json", _train_tokens(enc, r),
                            lambda rep: {"entity_f1": rep["micro"]["f1"], "entity_f1_macro": rep["macro"]["f1"]})


def _ner_predictions(rows: list[dict[str, Any]], logits: Any, labels: list[str]) -> list[list[str]]:
    out = []
    for row, sent_logits in zip(rows, logits):
        tags = ["O"] * len(row["gold"])  # words cut by max_length are predicted O: gold stays whole
        previous = None
        for pos, w in enumerate(row["word_ids"]):
            if w is not None and w != previous:
                tags[w] = labels[int(sent_logits[pos].argmax())]
            previous = w
        out.append(tags)
    return out


def run_ner_hf_trainer(r: dict[str, Any], work: Path, defaults: bool = False) -> dict[str, Any]:
    """The HF Trainer with ``DataCollatorForTokenClassification`` on the recipe, length-grouped batches included
    when the config groups them; with ``defaults``, random batches as it makes them by default."""
    import numpy as np
    from seqeval.metrics import f1_score
    from seqeval.scheme import IOB2
    from transformers import (
        AutoModelForTokenClassification,
        DataCollatorForTokenClassification,
        EarlyStoppingCallback,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    set_seed(r["seed"])
    tok, enc, labels = _ner_data(r)
    model = AutoModelForTokenClassification.from_pretrained(
        r["model"], num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)})
    features = {s: [{k: row[k] for k in ("input_ids", "attention_mask", "labels")} for row in rows]
                for s, rows in enc.items()}

    def in_order(split: str, logits: Any, label_ids: Any) -> Any:
        """The rows' logits in the file's order. Under ``train_sampling_strategy="group_by_length"`` transformers 5
        also groups the evaluation and prediction batches by length, in an order its seeded sampler makes afresh
        for every evaluation; the entity scorer pairs each row's logits with that row's words, so the order is
        undone here (and checked against the labels that travel with the predictions)."""
        rows = features[split]
        sampler = trainer._get_eval_sampler(rows)
        order = list(range(len(rows))) if sampler is None else list(sampler)
        if sorted(order) != list(range(len(rows))):
            raise RuntimeError("the evaluation sampler is not a permutation of the rows")
        out = [None] * len(order)
        for k, row in enumerate(order):
            if [int(x) for x in label_ids[k] if x != -100] != [x for x in rows[row]["labels"] if x != -100]:
                raise RuntimeError(f"{split} predictions out of the rows' order (prediction {k}, row {row})")
            out[row] = logits[k]
        return out

    def metrics(pred: Any) -> dict[str, float]:
        logits = in_order("validation", pred.predictions, pred.label_ids)
        tags = _ner_predictions(enc["validation"], logits, labels)
        gold = [row["gold"] for row in enc["validation"]]
        return {"f1": f1_score(gold, tags, mode="strict", scheme=IOB2, zero_division=0)}

    features_train = features["train"]
    every = max(1, math.ceil(len(features_train) / r["batch_size"]) // r["evals_per_epoch"])
    args = TrainingArguments(
        output_dir=str(work / "hf"), per_device_train_batch_size=r["batch_size"],
        per_device_eval_batch_size=r["eval_batch_size"], learning_rate=r["lr"], weight_decay=r["weight_decay"],
        num_train_epochs=r["epochs"], warmup_steps=_warmup_steps(len(features_train), r),
        lr_scheduler_type="linear",
        max_grad_norm=r["clip"] or 0.0, eval_strategy="steps", eval_steps=every, save_strategy="steps",
        save_steps=every, save_total_limit=1, load_best_model_at_end=True, metric_for_best_model="f1",
        report_to=[], logging_strategy="no", use_cpu=True, disable_tqdm=True, seed=r["seed"],
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if r["group_by_length"] and not defaults else "random",
        bf16=r["precision"].startswith("bf16"),
    )
    trainer = Trainer(model=model, args=args, train_dataset=features["train"], eval_dataset=features["validation"],
                      data_collator=DataCollatorForTokenClassification(tok), compute_metrics=metrics,
                      callbacks=[EarlyStoppingCallback(early_stopping_patience=r["patience"])])
    trainer.train()
    trainer.compute_metrics = None  # its metrics read the validation rows; the test rows are scored below
    output = trainer.predict(features["test"])
    logits = output.predictions
    tags = _ner_predictions(enc["test"], in_order("test", logits, output.label_ids), labels)
    gold = [row["gold"] for row in enc["test"]]
    trainer.save_model(str(work / "hf_model"))
    return {"entity_f1": f1_score(gold, tags, mode="strict", scheme=IOB2, zero_division=0),
            "entity_f1_macro": f1_score(gold, tags, mode="strict", scheme=IOB2, average="macro", zero_division=0),
            "train_tokens": _train_tokens(enc, r), "logits_shape": list(np.shape(logits))}


# ---------------------------------------------------------------------------------------------------- pre-training
def pretrain_assets(work: Path, docs: int, tokenizer: str) -> dict[str, Any]:
    """Packed 128-token blocks of the Wikipedia intros (lit-llm's own packing for every runner), a fresh BERT."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from lit_llm.datamodules import TextCorpusDataModule

    corpus = work / "wiki.jsonl"
    lines = (ROOT / "data" / "wiki" / "summaries.jsonl").read_text().splitlines()[:docs]
    corpus.write_text("\n".join(lines) + "\n")
    dm = TextCorpusDataModule(data_files=str(corpus), tokenizer=tokenizer, block_size=PRETRAIN_SEQ,
                              val_fraction=0.0, batch_size=PRETRAIN_BATCH, cache_dir=str(work / "hf_cache"))
    dm.setup("fit")
    # every field the datamodule makes (lit-llm's collate_blocks wants word_starts too); the peers use two of them
    blocks = [{k: torch.as_tensor(v) for k, v in dm.train_dataset[i].items()} for i in range(len(dm.train_dataset))]
    held_out, train = blocks[:PRETRAIN_BATCH * 2], blocks[PRETRAIN_BATCH * 2:]
    torch.save({"train": train, "held_out": held_out}, work / "blocks.pt")
    torch.manual_seed(0)
    vocab = len(dm.tokenizer)
    config = BertConfig(vocab_size=vocab, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=1024, max_position_embeddings=512)
    BertForMaskedLM(config).save_pretrained(work / "bert_256x4")
    return {"blocks": str(work / "blocks.pt"), "model": str(work / "bert_256x4"), "tokenizer": tokenizer,
            "train_blocks": len(train)}


def _held_out_loss(model: Any, held_out: list[dict[str, Any]], tok: Any) -> float:
    """Mean MLM cross-entropy on fixed masks (seed 1234): the same function for every runner."""
    import torch

    from lit_llm.text.masking import mask_tokens

    model.eval()
    total, count = 0.0, 0
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for i in range(0, len(held_out), PRETRAIN_BATCH):
            chunk = held_out[i:i + PRETRAIN_BATCH]
            ids = torch.stack([b["input_ids"] for b in chunk])
            special = torch.stack([b["special_tokens_mask"] for b in chunk])
            masked = mask_tokens(ids, special, mask_token_id=tok.mask_token_id, vocab_size=len(tok), generator=gen)
            logits = model(input_ids=masked.input_ids).logits  # (B, T, V)
            target = masked.labels != -100
            total += float(torch.nn.functional.cross_entropy(logits[target], masked.labels[target], reduction="sum"))
            count += int(target.sum())
    return total / max(count, 1)


def _pretrain_setup(a: dict[str, Any]) -> tuple[Any, Any, Any]:
    import torch
    from transformers import AutoTokenizer

    data = torch.load(a["blocks"], weights_only=True)  # our own file of tensors
    return data["train"], data["held_out"], AutoTokenizer.from_pretrained(a["tokenizer"])


def run_pre_raw(a: dict[str, Any], work: Path) -> dict[str, Any]:
    """Exactly MaskedLanguageModel's work in a hand-written loop: same masking, head on masked rows, same loss."""
    import torch
    from transformers import BertForMaskedLM

    from lit_llm.text.masking import mask_tokens
    from lit_llm.training.token_loss import token_cross_entropy

    train, held_out, tok = _pretrain_setup(a)
    torch.manual_seed(0)
    model = BertForMaskedLM.from_pretrained(a["model"]).train()
    opt = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LR)
    order = list(range(len(train)))
    random.Random(0).shuffle(order)
    start = None
    for step in range(a["warmup"] + a["steps"]):
        if step == a["warmup"]:
            start = time.perf_counter()
        idx = [order[(step * PRETRAIN_BATCH + j) % len(order)] for j in range(PRETRAIN_BATCH)]
        ids = torch.stack([train[i]["input_ids"] for i in idx])
        special = torch.stack([train[i]["special_tokens_mask"] for i in idx])
        masked = mask_tokens(ids, special, mask_token_id=tok.mask_token_id, vocab_size=len(tok))
        hidden = model.bert(input_ids=masked.input_ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        target = masked.labels != -100  # (B, T)
        logits = model.cls(hidden[target])  # (N, V): the head on the masked positions only
        loss_sum, count = token_cross_entropy(logits, masked.labels[target])
        (loss_sum / count.clamp(min=1)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    return {"tokens_per_s": a["steps"] * PRETRAIN_BATCH * PRETRAIN_SEQ / seconds,
            "held_out_loss": _held_out_loss(model, held_out, tok)}


def run_pre_lit_llm(a: dict[str, Any], work: Path) -> dict[str, Any]:
    """MaskedLanguageModel with its defaults (sparse prediction, exact token loss), the tokenizer passed."""
    import torch
    from lightning.pytorch import Callback, Trainer
    from torch.utils.data import DataLoader

    from lit_llm.datamodules.packing import collate_blocks
    from lit_llm.modules import MaskedLanguageModel

    train, held_out, tok = _pretrain_setup(a)
    torch.manual_seed(0)
    window: dict[str, float] = {}

    class Timer(Callback):
        def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
            if trainer.global_step == a["warmup"] and "start" not in window:
                window["start"] = time.perf_counter()

        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            window["end"] = time.perf_counter()

    lm = MaskedLanguageModel(model=a["model"], tokenizer=a["tokenizer"], export=False,
                             optimizer=functools.partial(torch.optim.AdamW, lr=PRETRAIN_LR))
    loader = DataLoader(train, batch_size=PRETRAIN_BATCH, shuffle=True,
                        collate_fn=functools.partial(collate_blocks, pad_token_id=tok.pad_token_id))
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=a["warmup"] + a["steps"], logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[Timer()], default_root_dir=str(work))
    trainer.fit(lm, loader)
    seconds = window["end"] - window["start"]
    return {"tokens_per_s": a["steps"] * PRETRAIN_BATCH * PRETRAIN_SEQ / seconds,
            "held_out_loss": _held_out_loss(lm.model, held_out, tok)}


def run_pre_hf(a: dict[str, Any], work: Path) -> dict[str, Any]:
    """The HF Trainer with DataCollatorForLanguageModeling's and TrainingArguments' defaults (lr and steps set)."""
    import torch
    from transformers import (
        BertForMaskedLM,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    train, held_out, tok = _pretrain_setup(a)
    torch.manual_seed(0)
    window: dict[str, float] = {}

    class Timer(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == a["warmup"] and "start" not in window:
                window["start"] = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            window["end"] = time.perf_counter()

    model = BertForMaskedLM.from_pretrained(a["model"])
    feats = [{"input_ids": b["input_ids"], "special_tokens_mask": b["special_tokens_mask"]} for b in train]
    args = TrainingArguments(output_dir=str(work / "hf"), per_device_train_batch_size=PRETRAIN_BATCH,
                             max_steps=a["warmup"] + a["steps"], learning_rate=PRETRAIN_LR, report_to=[],
                             save_strategy="no", logging_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=feats, data_collator=DataCollatorForLanguageModeling(tok),
                      callbacks=[Timer()])
    trainer.train()
    seconds = window["end"] - window["start"]
    return {"tokens_per_s": a["steps"] * PRETRAIN_BATCH * PRETRAIN_SEQ / seconds,
            "held_out_loss": _held_out_loss(model, held_out, tok)}


CHILDREN = {
    ("classification", "lit_llm"): run_cls_lit_llm,
    ("classification", "hf_trainer"): run_cls_hf_trainer,
    ("classification", "hf_trainer_defaults"): functools.partial(run_cls_hf_trainer, defaults=True),
    ("classification", "plain_pytorch"): run_cls_plain,
    ("ner", "lit_llm"): run_ner_lit_llm,
    ("ner", "hf_trainer"): run_ner_hf_trainer,
    ("ner", "hf_trainer_defaults"): functools.partial(run_ner_hf_trainer, defaults=True),
    ("pretrain", "raw_like_for_like"): run_pre_raw,
    ("pretrain", "lit_llm"): run_pre_lit_llm,
    ("pretrain", "hf_trainer_defaults"): run_pre_hf,
}


# ------------------------------------------------------------------------------------------------------- driver
def run_child(task: str, runner: str, spec: dict[str, Any], work: Path, threads: int) -> dict[str, Any]:
    """One runner in a fresh process; the wall time is the whole process, as a user would time the command."""
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, __file__, "--child", task, runner, "--spec", json.dumps(spec), "--work", str(work)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if proc.returncode:
        return {"error": proc.stderr[-2000:]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.setdefault("wall_s", wall)
    if "train_tokens" in result:
        result["tokens_per_s"] = result.pop("train_tokens") / result["wall_s"]
    return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, min, max and spread = (max - min) / median of every numeric field over the repeats."""
    out: dict[str, Any] = {}
    ok = [r for r in runs if "error" not in r]
    for key in sorted({k for r in ok for k, v in r.items() if isinstance(v, (int, float))}):
        values = [r[key] for r in ok if key in r]
        med = statistics.median(values)
        out[key] = {"median": med, "min": min(values), "max": max(values),
                    "spread": (max(values) - min(values)) / med if med else 0.0, "runs": values}
    out["errors"] = [r["error"] for r in runs if "error" in r]
    return out


def _ratio(s: dict[str, Any], a: str, b: str, key: str) -> float | None:
    try:
        return s[a][key]["median"] / s[b][key]["median"]
    except (KeyError, ZeroDivisionError):
        return None


def report_stem(tasks: list[str]) -> str:
    """``peers`` for every task, else ``peers_<task>...``: tasks run separately do not overwrite each other."""
    return "peers" if set(tasks) == set(RUNNERS) else "_".join(["peers", *[t for t in RUNNERS if t in tasks]])


def write_report(out: Path, stem: str, result: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# lit-llm vs its peers, same data, one run", "", f"Command: `{result['command']}`", "",
             f"{result['machine']}; {result['threads']} threads; {result['repeats']} repeats, runners interleaved "
             "(order rotated each repeat), each in a fresh process. Median (min - max, spread = (max - min) / "
             "median).", ""]
    fields = {"classification": ("accuracy", "macro_f1", "wall_s", "tokens_per_s", "train_samples_per_s"),
              "ner": ("entity_f1", "entity_f1_macro", "wall_s", "tokens_per_s"),
              "pretrain": ("tokens_per_s", "held_out_loss")}
    for task, summary in result["tasks"].items():
        lines += [f"## {task}", "", "| runner | " + " | ".join(fields[task]) + " |",
                  "|---|" + "---:|" * len(fields[task])]
        for runner, s in summary.items():
            cells = []
            for f in fields[task]:
                v = s.get(f)
                cells.append("-" if v is None else f"{v['median']:.4g} ({v['min']:.4g} - {v['max']:.4g}, "
                             f"{v['spread']:.1%})")
            lines.append(f"| {runner} | " + " | ".join(cells) + " |")
            for err in s.get("errors", []):
                lines.append(f"\n{runner} failed: `{err.strip().splitlines()[-1][:300] if err.strip() else err}`")
        lines.append("")
        order = ("startup", "data_setup", "model_setup", "training_loop", "validation", "fit_end", "test")
        lit = summary.get("lit_llm", {})
        stages = {f"stage_{n}_s": lit[f"stage_{n}_s"]["median"] for n in order if f"stage_{n}_s" in lit}
        if stages:
            lines += ["lit-llm's wall time by stage, from its run summary (median seconds): " + ", ".join(
                f"{k.removeprefix('stage_').removesuffix('_s').replace('_', ' ')} {v:.1f}" for k, v in stages.items()
            ) + ".", ""]
        if task == "classification" and "padding_cells_per_token" in result:
            pad = result["padding_cells_per_token"]
            lines += [f"Training batch cells (batch x padded length) per real token in an epoch: "
                      f"{pad['random_batches']:.3f} with random batches, {pad['length_grouped']:.3f} grouped by "
                      "length."]
            if "validation_sorted" in pad:
                lines += [f"Validation batch cells per real token: {pad['validation_file_order']:.3f} in the file's "
                          f"order, {pad['validation_sorted']:.3f} sorted by length (`sort_eval_by_length`)."]
            lines.append("")
        for text in result["verdicts"].get(task, []):
            lines.append(f"- {text}")
        lines.append("")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    return out / f"{stem}.md"


def verdicts(tasks: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if "classification" in tasks:
        s = tasks["classification"]
        t, acc = _ratio(s, "lit_llm", "hf_trainer", "wall_s"), _ratio(s, "lit_llm", "hf_trainer", "accuracy")
        plain = _ratio(s, "lit_llm", "plain_pytorch", "wall_s")
        loop = _ratio(s, "lit_llm", "plain_pytorch", "train_samples_per_s")
        defaults = _ratio(s, "lit_llm", "hf_trainer_defaults", "wall_s")
        out["classification"] = [
            f"lit-llm / HF Trainer wall time: {t:.3f}" if t else "wall-time ratio: n/a",
            f"lit-llm / HF Trainer with its default random batches, wall time: {defaults:.3f}"
            if defaults else "defaults ratio: n/a",
            f"lit-llm / HF Trainer test accuracy: {acc:.3f}" if acc else "accuracy ratio: n/a",
            f"lit-llm / plain loop wall time: {plain:.3f}" if plain else "plain ratio: n/a",
            f"lit-llm / plain loop training-loop samples/s (validation excluded): {loop:.3f} (goal >= 0.97)"
            if loop else "training-loop ratio: n/a",
            "goal: accuracy ratio >= 1 at a wall-time ratio <= 0.9; a ratio counts only where it differs from 1 by "
            "more than the runners' spreads",
        ]
    if "ner" in tasks:
        s = tasks["ner"]
        t, f1 = _ratio(s, "lit_llm", "hf_trainer", "wall_s"), _ratio(s, "lit_llm", "hf_trainer", "entity_f1")
        defaults = _ratio(s, "lit_llm", "hf_trainer_defaults", "wall_s")
        defaults_f1 = _ratio(s, "lit_llm", "hf_trainer_defaults", "entity_f1")
        out["ner"] = [f"lit-llm / HF Trainer wall time: {t:.3f}" if t else "wall-time ratio: n/a",
                      f"lit-llm / HF Trainer entity F1 (strict): {f1:.3f}" if f1 else "F1 ratio: n/a",
                      f"lit-llm / HF Trainer with its default random batches, wall time: {defaults:.3f}"
                      if defaults else "defaults wall-time ratio: n/a",
                      f"lit-llm / HF Trainer with its default random batches, entity F1 (strict): {defaults_f1:.3f}"
                      if defaults_f1 else "defaults F1 ratio: n/a",
                      "goal: F1 ratio >= 1 at a wall-time ratio <= 0.9"]
    if "pretrain" in tasks:
        s = tasks["pretrain"]
        a = _ratio(s, "lit_llm", "raw_like_for_like", "tokens_per_s")
        b = _ratio(s, "lit_llm", "hf_trainer_defaults", "tokens_per_s")
        out["pretrain"] = [
            f"(a) framework overhead, like for like: lit-llm / raw loop doing the same work = {a:.3f} tokens/s "
            "(goal >= 0.97)" if a else "(a) n/a",
            f"(b) defaults: lit-llm / HF Trainer + DataCollatorForLanguageModeling = {b:.3f} tokens/s (goal >= 1.5 "
            "at the same held-out loss after the same tokens: compare the held_out_loss column)" if b else "(b) n/a",
        ]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=tuple(RUNNERS), default=list(RUNNERS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runners", nargs="+", help="only these runners of each task (default: all of them)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--pretrain-steps", type=int, default=60, help="timed optimizer steps per pre-training run")
    parser.add_argument("--pretrain-warmup", type=int, default=5)
    parser.add_argument("--pretrain-docs", type=int, default=3000, help="Wikipedia intros packed into blocks")
    parser.add_argument("--smoke", action="store_true", help="every path on a few dozen examples, 1 repeat")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/ ($TMPDIR/peers_smoke with --smoke)")
    parser.add_argument("--child", nargs=2, metavar=("TASK", "RUNNER"), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--keep-work", action="store_true",
                        help="keep the temporary folder of the runs' checkpoints and models (GBs; removed by default)")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(CHILDREN[tuple(args.child)](json.loads(args.spec), args.work)))
        return 0

    repeats = 1 if args.smoke else args.repeats
    out = args.out or (Path(tempfile.gettempdir()) / "peers_smoke" if args.smoke else ROOT / "benchmarks")
    work = Path(tempfile.mkdtemp(prefix="bench_peers_"))
    try:
        return _run(args, repeats, out, work, argv)
    finally:
        if args.keep_work:
            print(f"runs' files kept in {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, repeats: int, out: Path, work: Path, argv: list[str] | None) -> int:
    specs: dict[str, dict[str, Any]] = {}
    if "classification" in args.tasks:
        r = recipe(CLS_CONFIG)
        specs["classification"] = smoke_recipe(r, work, conll=False) if args.smoke else r
    if "ner" in args.tasks:
        r = recipe(NER_CONFIG)
        if not Path(r["files"]["train"]).exists():  # split WNUT-16 into the work folder, as prepare_wnut16 does
            split_dir = work / "data" / "wnut16"  # prepare_wnut16 writes only under a data/ folder
            print(f"{r['files']['train']} is missing: splitting WNUT-16 into {split_dir} for this run", flush=True)
            subprocess.run([sys.executable, str(ROOT / "scripts" / "prepare_wnut16.py"), "--out", str(split_dir)],
                           check=True, cwd=ROOT)
            r["files"] = {s: str(split_dir / Path(p).name) for s, p in r["files"].items()}
        specs["ner"] = smoke_recipe(r, work, conll=True) if args.smoke else r
    if "pretrain" in args.tasks:
        tokenizer = str(ROOT / "data" / "models" / "all-MiniLM-L6-v2")
        assets = pretrain_assets(work, 200 if args.smoke else args.pretrain_docs, tokenizer)
        steps, warmup = (3, 1) if args.smoke else (args.pretrain_steps, args.pretrain_warmup)
        specs["pretrain"] = {**assets, "steps": steps, "warmup": warmup}

    chosen = {t: [n for n in RUNNERS[t] if not args.runners or n in args.runners] for t in specs}
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {t: {n: [] for n in chosen[t]} for t in specs}
    started = time.perf_counter()
    for rep in range(repeats):
        for task, spec in specs.items():
            names = chosen[task]
            for runner in names[rep % len(names):] + names[:rep % len(names)]:
                result = run_child(task, runner, spec, work / f"{task}_{runner}_{rep}", args.threads)
                raw[task][runner].append(result)
                shown = {k: round(v, 4) for k, v in result.items() if isinstance(v, float)}
                print(f"rep {rep} {task} {runner}: {shown or result.get('error', '')[-1500:]}", flush=True)
    tasks = {task: {runner: summarize(runs) for runner, runs in per.items()} for task, per in raw.items()}
    import torch

    result = {
        "command": "python scripts/bench_peers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "smoke": args.smoke, "repeats": repeats, "threads": args.threads, "elapsed_s": time.perf_counter() - started,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores",
        "torch": torch.__version__, "recipes": specs, "tasks": tasks, "verdicts": verdicts(tasks), "raw": raw,
    }
    if "classification" in specs:
        result["padding_cells_per_token"] = padding_cells(specs["classification"])
    md = write_report(out, report_stem(args.tasks), result)
    print(md.read_text())
    errors = [e for per in tasks.values() for s in per.values() for e in s["errors"]]
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
