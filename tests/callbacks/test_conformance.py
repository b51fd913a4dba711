"""Every callback of ``lit_llm.callbacks.__all__`` through the same checks: built from YAML, trains a user module that
is not ours (plain ``training_step``), resumes with identical state, runs on 2 CPU processes (DDP, gloo).

The list of callbacks comes from ``lit_llm.callbacks.__all__`` (exception classes excluded), and a callback without
a case FAILS ``test_every_callback_has_a_case``. To add a callback, add ONE entry to ``CONFORMANCE_CASES``: its class
name -> the YAML a user would put under ``trainer.callbacks`` (``${teacher}`` and ``${tmp}`` are filled in with a
tiny teacher directory and a scratch directory). The user module has a tiny BERT under ``self.model``, dict batches
of 4 with ``input_ids`` / ``attention_mask`` / ``labels``, 16 samples per epoch and two param groups with different
learning rates.

The 2-process check runs every case in ONE pair of processes (started once; a fit per case, each on the same gloo
process group), so its cost is one start-up rather than one per callback; each case's result is recorded and
checked on its own, so a failure names its callback.
"""

from __future__ import annotations

import string
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.multiprocessing as mp
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar
from torch.utils.data import DataLoader
from transformers import BertConfig, BertForSequenceClassification

import lit_llm.callbacks

CONFORMANCE_CASES: dict[str, str] = {
    "WarmupSchedule": """
class_path: lit_llm.callbacks.WarmupSchedule
init_args: {warmup: 3, decay: cosine, min_lr_ratio: 0.1}
""",
    "GlobalBatchSize": """
class_path: lit_llm.callbacks.GlobalBatchSize
init_args: {global_batch_size: 8}
""",
    "TransformerThroughputMonitor": """
class_path: lit_llm.callbacks.TransformerThroughputMonitor
init_args: {peak_flops: 1.0e9, window_size: 2}
""",
    "Pruning": """
class_path: lit_llm.callbacks.Pruning
init_args: {amount: 0.5, start_step: 0, end_step: 3, frequency: 1, report: false}
""",
    "LowRankFactorization": """
class_path: lit_llm.callbacks.LowRankFactorization
init_args: {rank: 2, report: false}
""",
    "LoRA": """
class_path: lit_llm.callbacks.LoRA
init_args: {rank: 2, alpha: 4, export_merged: true}
""",
    "DistillationTeacher": """
class_path: lit_llm.callbacks.DistillationTeacher
init_args: {teacher: "${teacher}", temperature: 2.0, alpha: 0.5, hidden_layers: {0: 0, 1: 1}}
""",
    "Int8Quantization": """
class_path: lit_llm.callbacks.Int8Quantization
init_args: {backend: onnxruntime, qat_start: 0.25, report: false, export_artifact: false}
""",
    "ExactResume": """
class_path: lit_llm.callbacks.ExactResume
""",
    "StopOnNonFiniteLoss": """
class_path: lit_llm.callbacks.StopOnNonFiniteLoss
""",
    "PlainProgressBar": """
class_path: lit_llm.callbacks.PlainProgressBar
init_args: {every_n_steps: 2, every_n_seconds: 0}
""",
    "StageTimes": """
class_path: lit_llm.callbacks.StageTimes
""",
    "EMA": """
class_path: lit_llm.callbacks.EMA
init_args: {decay: 0.5}
""",
}

# Cases known to fail for a reason outside this suite: name -> reason (xfail, not strict). Empty when all pass.
KNOWN_FAILURES: dict[str, str] = {}

CALLBACKS = sorted(
    name
    for name in lit_llm.callbacks.__all__
    if isinstance(getattr(lit_llm.callbacks, name), type) and issubclass(getattr(lit_llm.callbacks, name), Callback)
)

MICRO_BATCH, SAMPLES, EPOCHS = 4, 16, 2


def _marks(name: str) -> list[Any]:
    return [pytest.mark.xfail(strict=False, reason=KNOWN_FAILURES[name])] if name in KNOWN_FAILURES else []


PARAMS = [pytest.param(name, id=name, marks=_marks(name)) for name in CALLBACKS]


def _bert(hidden: int) -> BertForSequenceClassification:
    return BertForSequenceClassification(BertConfig(
        vocab_size=30, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2, intermediate_size=hidden,
        max_position_embeddings=16, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    ))


@pytest.fixture(scope="module")
def case_paths(tmp_path_factory) -> dict[str, str]:
    """The ``${...}`` values of the cases: a tiny HF teacher directory and a scratch directory, made once under
    pytest's own temporary root (which pytest prunes), not left behind in the system's temporary folder."""
    root = tmp_path_factory.mktemp("conformance")
    torch.manual_seed(1)
    _bert(16).save_pretrained(root / "teacher")
    return {"teacher": str(root / "teacher"), "tmp": str(root)}


def parser() -> ArgumentParser:
    p = ArgumentParser(exit_on_error=False)
    p.add_argument("--callback", type=Callback)  # the same subclass resolution LightningCLI's trainer.callbacks uses
    return p


def spec(name: str, paths: dict[str, str]) -> dict[str, Any]:
    """The case's YAML as a dict, with ``${teacher}`` / ``${tmp}`` filled in; fails when the callback has none."""
    if name not in CONFORMANCE_CASES:
        pytest.fail(f"{name} is in lit_llm.callbacks.__all__ but has no conformance case: add one entry "
                    f"'{name}': '<YAML>' to CONFORMANCE_CASES in {Path(__file__).name}.")
    return yaml.safe_load(string.Template(CONFORMANCE_CASES[name]).substitute(paths))


def build(name: str, paths: dict[str, str]) -> Callback:
    p = parser()
    config = p.parse_object({"callback": spec(name, paths)})
    return p.instantiate(config).callback


class UserClassifier(pl.LightningModule):
    """A user's module, not ours: an HF model wrapped by hand, with a plain ``training_step``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = _bert(8)

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

    def __init__(self) -> None:
        self.steps: list[tuple[int, list[float], int]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.steps.append((trainer.global_step, [g["lr"] for g in optimizer.param_groups],
                           trainer.accumulate_grad_batches))


def fit(callbacks: list[Callback], root: Path, ckpt_path: Path | None = None,
        **kwargs: Any) -> tuple[pl.Trainer, UserClassifier]:
    # Artifacts a callback writes by default go under ``root`` (never into the working directory).
    defaults = dict(accelerator="cpu", devices=1, max_epochs=EPOCHS, logger=False, enable_checkpointing=False,
                    enable_model_summary=False, default_root_dir=root,
                    enable_progress_bar=any(isinstance(c, ProgressBar) for c in callbacks))
    trainer = pl.Trainer(callbacks=callbacks, **{**defaults, **kwargs})
    module = UserClassifier()
    trainer.fit(module, ckpt_path=ckpt_path)
    return trainer, module


def _same(a: Any, b: Any) -> bool:
    """Equality for nested states that may hold tensors."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_every_callback_has_a_case():
    assert len(CALLBACKS) >= 9, CALLBACKS  # the list really comes from __all__
    assert "NonFiniteLossError" not in CALLBACKS  # exception classes are not callbacks
    missing = sorted(set(CALLBACKS) - set(CONFORMANCE_CASES))
    assert not missing, f"callbacks without a conformance case: {missing}; add one entry each to CONFORMANCE_CASES"
    stale = sorted(set(CONFORMANCE_CASES) - set(CALLBACKS))
    assert not stale, f"conformance cases for names not in lit_llm.callbacks.__all__: {stale}"


@pytest.mark.parametrize("name", PARAMS)
def test_builds_from_yaml_and_rejects_unknown_keys(name, case_paths):
    paths = case_paths
    callback = build(name, paths)
    assert type(callback).__name__ == name
    bad = spec(name, paths)
    bad.setdefault("init_args", {})["not_an_argument"] = 1
    with pytest.raises(Exception, match="not_an_argument"):
        parser().parse_object({"callback": bad})


@pytest.mark.parametrize("name", PARAMS)
def test_trains_and_resumes_with_identical_state(name, tmp_path, case_paths):
    paths = case_paths
    callback, full = build(name, paths), Record()
    every_epoch = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    trainer, module = fit([callback, full, every_epoch], tmp_path / "run", enable_checkpointing=True)
    assert trainer.global_step == len(full.steps) > 0

    ckpt = tmp_path / "epoch=0.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)  # every callback state loads weights-only
    if callback.state_dict():
        # The state is in the checkpoint under the callback's key (its value at epoch 0 may differ from the end's).
        assert saved["callbacks"][callback.state_key].keys() == callback.state_dict().keys()

    resumed_callback, resumed = build(name, paths), Record()
    trainer2, module2 = fit([resumed_callback, resumed], tmp_path / "resumed", ckpt_path=ckpt)
    steps_per_epoch = len(full.steps) // EPOCHS
    assert resumed.steps == full.steps[steps_per_epoch:]  # same global steps, LRs and accumulation
    assert trainer2.global_step == trainer.global_step
    assert _same(resumed_callback.state_dict(), callback.state_dict())
    for p, q in zip(module.parameters(), module2.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ 2 processes
class _Dump(Callback):
    """At fit end on each rank: the callback's state, the weights and the steps, for the parent to compare."""

    def __init__(self, out: Path, callback: Callback, record: Record) -> None:
        self.out, self.callback, self.record = out, callback, record

    def on_train_end(self, trainer, pl_module) -> None:
        weights = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        torch.save({"state": self.callback.state_dict(), "weights": weights, "steps": self.record.steps,
                    "world_size": trainer.world_size}, self.out / f"rank{trainer.global_rank}.pt")


def _two_process_worker(rank: int, names: list[str], paths: dict[str, str], out: str, port: int) -> None:
    """One of 2 processes: a DDP fit per case, all on one gloo process group made by the first fit."""
    import os

    from lightning.pytorch.strategies import DDPStrategy

    for name in names:
        case_dir = Path(out) / name
        case_dir.mkdir(parents=True, exist_ok=True)
        (case_dir / f"started{rank}").touch()
        # Lightning's default cluster environment: processes launched by us (LOCAL_RANK set); its teardown
        # removes WORLD_SIZE, so it is set again for every fit.
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", NODE_RANK="0",
                          LOCAL_RANK=str(rank))
        try:
            callback, record = build(name, paths), Record()
            # A rank that raises leaves the other in a collective: the timeout turns that into an error too.
            strategy = DDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=60))
            fit([callback, record, _Dump(case_dir, callback, record)], case_dir, strategy=strategy, devices=2)
        except BaseException:  # noqa: BLE001 - recorded for the parent, which reports it under the case's name
            (case_dir / f"error{rank}.txt").write_text(traceback.format_exc())


@pytest.mark.slow
def test_every_callback_on_two_processes(tmp_path, case_paths):
    paths = case_paths
    names = [name for name in CALLBACKS if name in CONFORMANCE_CASES]
    from lightning.fabric.plugins.environments.lightning import find_free_network_port

    context = mp.start_processes(_two_process_worker, args=(names, paths, str(tmp_path), find_free_network_port()),
                                nprocs=2, join=False, start_method="fork")
    deadline = time.monotonic() + 120 + 30 * len(names)
    try:
        while not context.join(timeout=5):
            if time.monotonic() > deadline:
                break
    except mp.ProcessExitedException:
        pass  # a worker aborting at interpreter exit (gloo teardown) after writing its results is not a failure
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()

    problems: dict[str, str] = {}
    for name in names:
        case_dir = tmp_path / name
        errors = sorted(case_dir.glob("error*.txt"))
        results = [case_dir / f"rank{r}.pt" for r in (0, 1)]
        if errors:
            problems[name] = errors[0].read_text()[-1500:]
        elif not all(r.exists() for r in results):
            started = [r for r in (0, 1) if (case_dir / f"started{r}").exists()]
            problems[name] = f"no result (ranks started: {started}; the processes hung or died in this case)"
        else:
            ranks = [torch.load(r, weights_only=True) for r in results]
            if [r["world_size"] for r in ranks] != [2, 2]:
                problems[name] = f"world sizes {[r['world_size'] for r in ranks]}"
            elif not torch.equal(ranks[0]["weights"], ranks[1]["weights"]):
                problems[name] = "the replicas' weights differ after training"
            elif not ranks[0]["steps"] or ranks[0]["steps"] != ranks[1]["steps"]:
                problems[name] = f"steps / LRs differ between ranks: {ranks[0]['steps']} vs {ranks[1]['steps']}"
            elif not _same(ranks[0]["state"], ranks[1]["state"]):
                problems[name] = "the callback's state_dict differs between ranks"
    unexpected = {name: why for name, why in problems.items() if name not in KNOWN_FAILURES}
    assert not unexpected, "\n\n".join(f"[{name}] {why}" for name, why in unexpected.items())
