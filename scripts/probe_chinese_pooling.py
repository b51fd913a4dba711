"""Probe: does whole-word-masked pre-training help Chinese sentiment once the classifier reads the mean over the
tokens instead of [CLS]? A plain PyTorch loop on the budget of scripts/bench_chinese.py: 4,000 training reviews (the
seed-13 shuffle), 2 epochs, lr 5e-4, batch 32, 10% warm-up then linear decay, clipping at 1.0, max length 128, fused
AdamW; best validation accuracy of 4 evaluations (every half epoch) on the whole validation split. Each start
(random initialization of the export's config, or the export's weights) with each pooling ([CLS] through
``AutoModelForSequenceClassification``, or a masked mean of the last hidden states and a linear layer).

Usage (after ``python scripts/prepare_chinese.py`` and a pre-training run of configs/pretrain/bert_zh_wwm.yaml)::

    .venv/bin/python scripts/probe_chinese_pooling.py runs/pretrain_wwm/version_0/export

Prints one JSON line per run. Results: benchmarks/chinese.md ("Probe: pooling").
"""
from __future__ import annotations

import json
import random
import sys
import time
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from lit_llm.training.optim import no_decay_param_groups

DATA = "data/zh/sentiment"
BATCH, EPOCHS, LR, MAX_LENGTH, TRAIN = 32, 2, 5e-4, 128, 4000


class MeanPool(nn.Module):
    """A masked mean over the tokens' last hidden states, then dropout and a linear layer."""

    def __init__(self, encoder: nn.Module, hidden: int, num_labels: int) -> None:
        super().__init__()
        self.encoder, self.dropout, self.out = encoder, nn.Dropout(0.1), nn.Linear(hidden, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> torch.Tensor:
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.out(self.dropout((h * m).sum(1) / m.sum(1)))


class Cls(nn.Module):
    """``AutoModelForSequenceClassification``: the model's own head on [CLS]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def main(export: str, seeds: tuple[int, ...] = (13, 14)) -> None:
    torch.set_num_threads(2)
    lines = open(f"{DATA}/train.jsonl", encoding="utf-8").read().splitlines()
    random.Random(13).shuffle(lines)
    train = [json.loads(x) for x in lines[:TRAIN]]
    val = [json.loads(x) for x in open(f"{DATA}/validation.jsonl", encoding="utf-8").read().splitlines()]
    labels = sorted({str(r["label"]) for r in train})
    tok = AutoTokenizer.from_pretrained(export)

    def encode(rows: list[dict[str, Any]]) -> tuple[Any, torch.Tensor]:
        e = tok([r["text"] for r in rows], truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt")
        return e, torch.tensor([labels.index(str(r["label"])) for r in rows])

    def build(start: str, pooling: str, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        config = AutoConfig.from_pretrained(export)
        if pooling == "cls":
            config.num_labels = len(labels)
            if start == "wwm":
                return Cls(AutoModelForSequenceClassification.from_pretrained(export, num_labels=len(labels)))
            return Cls(AutoModelForSequenceClassification.from_config(config))
        encoder = AutoModel.from_pretrained(export) if start == "wwm" else AutoModel.from_config(config)
        return MeanPool(encoder, config.hidden_size, len(labels))

    @torch.no_grad()
    def evaluate(model: nn.Module) -> float:
        model.eval()
        correct = 0
        for i in range(0, len(val), 128):
            e, y = encode(val[i:i + 128])
            correct += int((model(**e).argmax(-1) == y).sum())
        model.train()
        return correct / len(val)

    def run(start: str, pooling: str, seed: int) -> None:
        model = build(start, pooling, seed)
        model.train()  # from_pretrained returns a model in eval mode (dropout off); from_config one in train mode
        # the parameter groups of a lit-llm module: no decay on biases, norms and embeddings
        opt = torch.optim.AdamW(no_decay_param_groups(model, weight_decay=0.01), lr=LR, fused=True)
        per_epoch = (len(train) + BATCH - 1) // BATCH
        total, warm = EPOCHS * per_epoch, int(0.1 * EPOCHS * per_epoch)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: (s + 1) / (warm + 1) if s < warm else max(0.0, (total - s) / (total - warm)))
        rng, best, step, start_time = random.Random(seed), 0.0, 0, time.time()
        for _ in range(EPOCHS):
            order = list(range(len(train)))
            rng.shuffle(order)
            for b in range(per_epoch):
                e, y = encode([train[i] for i in order[b * BATCH:(b + 1) * BATCH]])
                nn.functional.cross_entropy(model(**e), y).backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                opt.zero_grad()
                step += 1
                if b + 1 in (per_epoch // 2, 2 * (per_epoch // 2)):  # twice an epoch, as val_check_interval: 0.5
                    best = max(best, evaluate(model))
        print(json.dumps({"start": start, "pooling": pooling, "seed": seed, "best_val_acc": round(best, 4),
                          "seconds": round(time.time() - start_time, 1)}), flush=True)

    for seed in seeds:
        for pooling in ("cls", "mean"):
            for start in ("random", "wwm"):
                run(start, pooling, seed)


if __name__ == "__main__":
    main(sys.argv[1])
