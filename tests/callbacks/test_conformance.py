"""Every callback through the same checks: built from YAML, trains a user module that is not ours, resumes with
identical state, runs on 2 CPU processes (ddp_spawn, gloo).

To add a callback, append ``(id, yaml)`` (or ``(id, factory)``) to ``CONFORMANCE_CASES``. The user module has a
tiny BERT under ``self.model``, dict batches of 4 with ``input_ids`` / ``attention_mask`` / ``labels``, 16 samples
per epoch and two param groups with different learning rates.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader
from transformers import BertConfig, BertForSequenceClassification

Case = tuple[str, "str | Callable[[], Callback]"]

CONFORMANCE_CASES: list[Case] = [
    ("warmup", """
class_path: lit_llm.callbacks.WarmupSchedule
init_args: {warmup: 3, decay: cosine, min_lr_ratio: 0.1}
"""),
    ("global_batch", """
class_path: lit_llm.callbacks.GlobalBatchSize
init_args: {global_batch_size: 8}
"""),
    ("throughput", """
class_path: lit_llm.callbacks.TransformerThroughputMonitor
init_args: {peak_flops: 1.0e9, window_size: 2}
"""),
    ("pruning", """
class_path: lit_llm.callbacks.Pruning
init_args: {amount: 0.5, start_step: 0, end_step: 3, frequency: 1, report: false, artifact: false}
"""),
    ("low_rank", """
class_path: lit_llm.callbacks.LowRankFactorization
init_args: {rank: 4, report: false, artifact: false}
"""),
]

MICRO_BATCH, SAMPLES, EPOCHS = 4, 16, 2


def parser() -> ArgumentParser:
    p = ArgumentParser(exit_on_error=False)
    p.add_argument("--callback", type=Callback)  # the same subclass resolution LightningCLI's trainer.callbacks uses
    return p


def build(case: Case) -> Callback:
    _, spec = case
    if not isinstance(spec, str):
        return spec()
    p = parser()
    config = p.parse_object({"callback": yaml.safe_load(spec)})
    return p.instantiate_classes(config).callback


class UserClassifier(pl.LightningModule):
    """A user's module, not ours: an HF model wrapped by hand."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = BertForSequenceClassification(BertConfig(
            vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=8,
            max_position_embeddings=16, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        ))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.model(**batch).loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW([
            {"params": self.model.bert.parameters(), "lr": 1e-3},
            {"params": self.model.classifier.parameters(), "lr": 4e-3},
        ])

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        items = [{"input_ids": torch.randint(0, 30, (6,), generator=g),
                  "attention_mask": torch.ones(6, dtype=torch.long),
                  "labels": torch.tensor(i % 2)} for i in range(SAMPLES)]
        return DataLoader(items, batch_size=MICRO_BATCH)


class Record(Callback):
    """What must match between a run and its resume: step, LRs and accumulation at every optimizer step."""

    def __init__(self, out: Path | None = None) -> None:
        self.steps: list[tuple[int, list[float], int]] = []
        self.out = out

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.steps.append((trainer.global_step, [g["lr"] for g in optimizer.param_groups],
                           trainer.accumulate_grad_batches))

    def on_train_end(self, trainer, pl_module) -> None:
        if self.out is not None:  # ddp_spawn: the parent cannot see the workers' objects
            weights = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
            (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps({
                "steps": self.steps, "weights_sum": float(weights.double().sum()), "world_size": trainer.world_size,
            }))


def fit(callbacks: list[Callback], ckpt_path: Path | None = None, **kwargs: Any) -> tuple[pl.Trainer, UserClassifier]:
    defaults = dict(accelerator="cpu", devices=1, max_epochs=EPOCHS, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
    trainer = pl.Trainer(callbacks=callbacks, **{**defaults, **kwargs})
    module = UserClassifier()
    trainer.fit(module, ckpt_path=ckpt_path)
    return trainer, module


IDS = [case[0] for case in CONFORMANCE_CASES]


def _same(a: Any, b: Any) -> bool:
    """Equality for nested states that may hold tensors."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("case", CONFORMANCE_CASES, ids=IDS)
def test_builds_from_yaml_and_rejects_unknown_keys(case):
    assert isinstance(build(case), Callback)
    if isinstance(case[1], str):
        spec = yaml.safe_load(case[1])
        spec["init_args"]["not_an_argument"] = 1
        with pytest.raises(Exception, match="not_an_argument"):
            parser().parse_object({"callback": spec})


@pytest.mark.parametrize("case", CONFORMANCE_CASES, ids=IDS)
def test_trains_and_resumes_with_identical_state(case, tmp_path):
    callback, full = build(case), Record()
    every_epoch = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    trainer, module = fit([callback, full, every_epoch], enable_checkpointing=True)
    assert trainer.global_step == len(full.steps) > 0

    ckpt = tmp_path / "epoch=0.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    if callback.state_dict():
        # The state is in the checkpoint under the callback's key (its value at epoch 0 may differ from the end's).
        assert saved["callbacks"][callback.state_key].keys() == callback.state_dict().keys()

    resumed_callback, resumed = build(case), Record()
    trainer2, module2 = fit([resumed_callback, resumed], ckpt_path=ckpt)
    steps_per_epoch = len(full.steps) // EPOCHS
    assert resumed.steps == full.steps[steps_per_epoch:]  # same global steps, LRs and accumulation
    assert trainer2.global_step == trainer.global_step
    assert _same(resumed_callback.state_dict(), callback.state_dict())
    for p, q in zip(module.parameters(), module2.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.slow
def test_all_callbacks_together_on_two_processes(tmp_path):
    from lit_llm.schedules import lr_multiplier

    callbacks = [build(case) for case in CONFORMANCE_CASES]
    fit([*callbacks, Record(out=tmp_path)], strategy="ddp_spawn", devices=2, max_epochs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["weights_sum"] == ranks[1]["weights_sum"]  # DDP kept the replicas identical
    # 16 samples over 2 ranks = 2 micro batches of 4 each per epoch; global batch 8 = 4 x 2 -> no accumulation
    steps = ranks[0]["steps"]
    assert [s for s, _, _ in steps] == [0, 1, 2, 3] and {a for _, _, a in steps} == {1}
    for step, lrs, _ in steps:
        factor = lr_multiplier(step, warmup_steps=3, total_steps=4, decay="cosine", min_lr_ratio=0.1)
        assert lrs == pytest.approx([1e-3 * factor, 4e-3 * factor], rel=1e-12)
