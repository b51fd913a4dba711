"""Exact resume: a `lit-llm fit` killed with SIGKILL mid-epoch and resumed from its last checkpoint ends with the
same weights, bit for bit, as a run that was never interrupted (fine-tuning and pre-training, with warm-up,
global batch size (gradient accumulation), pruning and dropout active)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_llm.cli import resume_target

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def dropout_bert_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """The tiny BERT with dropout on, so a resume must also restore the random number generators."""
    from transformers import BertForMaskedLM

    from conftest import tiny_bert_config

    out = tmp_path_factory.mktemp("tiny_bert_dropout")
    torch.manual_seed(0)
    config = tiny_bert_config(len(tiny_tokenizer), hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    BertForMaskedLM(config).save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    return out


def _callbacks(global_batch: int, kill_at: int | None) -> list[dict]:
    callbacks = [
        {"class_path": "lit_llm.callbacks.WarmupSchedule", "init_args": {"warmup": 4}},
        {"class_path": "lit_llm.callbacks.GlobalBatchSize", "init_args": {"global_batch_size": global_batch}},
        {"class_path": "lit_llm.callbacks.Pruning",
         "init_args": {"amount": 0.5, "start_step": 0, "end_step": 10, "frequency": 2, "report": False}},
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"every_n_train_steps": 2, "save_last": True}},
    ]
    if kill_at is not None:  # dies in the middle of an accumulation cycle, 1 step and a micro-batch after a save
        kill = {"step": kill_at, "micro_batches": 1}
        callbacks.append({"class_path": "resume_helpers.KillAtStep", "init_args": kill})
    return callbacks


def _write_config(path: Path, model: dict, data: dict, *, global_batch: int, max_steps: int, kill_at=None) -> Path:
    cfg = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": max_steps,
            "deterministic": True,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": False,
            "callbacks": _callbacks(global_batch, kill_at),
        },
        "model": model,
        "data": data,
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def _fit(tmp_path: Path, config: Path, run_name: str, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(REPO)]), OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    return subprocess.run(
        [sys.executable, "-m", "lit_llm.cli", "fit", "--config", str(config), "--run_root", str(tmp_path / "runs"),
         "--run_name", run_name, *extra],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )


def _fit_in_process(tmp_path: Path, config: Path, run_name: str, *extra: str) -> tuple[int, str, list[str]]:
    """``lit-llm fit`` in this process (a new one costs seconds of imports): exit code, stdout, warning texts.
    One thread, as the killed child has, so the reductions (and the weights) match it bit for bit."""
    import contextlib
    import io
    import warnings

    from lit_llm.cli import main

    out, cwd = io.StringIO(), os.getcwd()
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    os.chdir(tmp_path)
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out):
            warnings.simplefilter("always")
            code = main(["fit", "--config", str(config), "--run_root", str(tmp_path / "runs"), "--run_name",
                         run_name, *extra])
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)  # the config's `deterministic: true` sets it globally
    return code, out.getvalue(), [str(w.message) for w in caught]


def _assert_same_training_state(a: Path, b: Path) -> None:
    ca, cb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert ca["global_step"] == cb["global_step"]
    assert ca["state_dict"].keys() == cb["state_dict"].keys()
    different = [k for k in ca["state_dict"] if not torch.equal(ca["state_dict"][k], cb["state_dict"][k])]
    assert not different, f"weights differ after the resume: {different[:5]}"
    for sa, sb in zip(ca["optimizer_states"], cb["optimizer_states"], strict=True):
        for pa, pb in zip(sa["state"].values(), sb["state"].values(), strict=True):
            assert all(torch.equal(pa[k], pb[k]) for k in pa), "optimizer state differs after the resume"


def _crash_resume_and_compare(tmp_path: Path, model: dict, data: dict, *, global_batch: int, max_steps: int,
                              kill_at: int) -> None:
    plain = _write_config(tmp_path / "plain.yaml", model, data, global_batch=global_batch, max_steps=max_steps)
    crashing = _write_config(tmp_path / "crashing.yaml", model, data, global_batch=global_batch,
                             max_steps=max_steps, kill_at=kill_at)
    code, _, _ = _fit_in_process(tmp_path, plain, "reference")
    assert code == 0

    crashed = _fit(tmp_path, crashing, "crash")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    run_dir = tmp_path / "runs" / "crash" / "version_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    saved_step = torch.load(last, weights_only=True)["global_step"]
    assert saved_step == kill_at - 1  # one step and a micro-batch of work were lost with the process

    code, stdout, warned = _fit_in_process(tmp_path, plain, "crash", "--ckpt_path", "last")
    assert code == 0
    assert f"the run continues in {run_dir}" in stdout
    assert not [w for w in warned if "not resumable" in w]  # Lightning's warning for loaders that restart the epoch
    assert not (tmp_path / "runs" / "crash" / "version_1").exists()
    assert (run_dir / "config.yaml").is_file() and (run_dir / "config.resume1.yaml").is_file()
    _assert_same_training_state(tmp_path / "runs" / "reference" / "version_0" / "checkpoints" / "last.ckpt", last)


@pytest.mark.slow
def test_fine_tuning_killed_mid_epoch_resumes_bitwise(tmp_path, dropout_bert_dir, sentiment_csvs):
    model = {"class_path": "lit_llm.modules.SequenceClassifier",
             "init_args": {"model": str(dropout_bert_dir),
                           "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 3e-3}}}}
    data = {"class_path": "lit_llm.datamodules.TextClassificationDataModule",
            "init_args": {"tokenizer": str(dropout_bert_dir), "train_file": str(sentiment_csvs["train"]),
                          "validation_file": str(sentiment_csvs["val"]), "batch_size": 8}}
    # 96 examples / 8 = 12 micro-batches = 6 steps of 16 an epoch; the kill is in epoch 1, the run ends in epoch 2
    _crash_resume_and_compare(tmp_path, model, data, global_batch=16, max_steps=14, kill_at=9)


@pytest.mark.slow
def test_pretraining_killed_mid_epoch_resumes_bitwise(tmp_path, dropout_bert_dir):
    docs = [f"the movie {i} was really good and the story of john in paris was great . the end" for i in range(40)]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    model = {"class_path": "lit_llm.modules.MaskedLanguageModel",
             "init_args": {"model": str(dropout_bert_dir), "whole_word_masking": True,  # masks from the global RNG
                           "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3}}}}
    data = {"class_path": "lit_llm.datamodules.TextCorpusDataModule",
            "init_args": {"data_files": str(corpus), "tokenizer": str(dropout_bert_dir), "block_size": 32,
                          "batch_size": 4, "val_fraction": 0.2, "cache_dir": str(tmp_path / "hf")}}
    _crash_resume_and_compare(tmp_path, model, data, global_batch=8, max_steps=12, kill_at=5)


def test_resume_target(tmp_path):
    runs = tmp_path / "runs"
    assert resume_target("last", runs, "x") == (None, None)  # nothing to resume: a new run
    for n in (0, 1, 2):
        (runs / "x" / f"version_{n}" / "checkpoints").mkdir(parents=True)
        (runs / "x" / f"version_{n}" / "config.yaml").write_text("{}")
    for n in (0, 1):
        (runs / "x" / f"version_{n}" / "checkpoints" / "last.ckpt").write_bytes(b"")
    last = runs / "x" / "version_1" / "checkpoints" / "last.ckpt"
    assert resume_target("last", runs, "x") == (last, runs / "x" / "version_1")
    assert resume_target(str(last), runs, "y") == (last, runs / "x" / "version_1")  # continues that run
    elsewhere = tmp_path / "weights.ckpt"
    elsewhere.write_bytes(b"")
    assert resume_target(str(elsewhere), runs, "x") == (elsewhere, None)  # a new run starts from it
    with pytest.raises(FileNotFoundError, match=r"--ckpt_path .*nope.ckpt: no such checkpoint"):
        resume_target(str(tmp_path / "nope.ckpt"), runs, "x")


class _RankNoisy(pl.LightningModule):
    """Dropout, and each rank draws a different amount of random numbers, so the ranks' generators diverge and a
    resume must restore each rank's own state."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        torch.rand(1 + self.global_rank)
        return self.net(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def train_dataloader(self):
        from lit_llm.datamodules import ResumableDataLoader

        return ResumableDataLoader(torch.randn(40, 4, generator=torch.Generator().manual_seed(0)), batch_size=4,
                                   shuffle=True, seed=7)


@pytest.mark.slow
def test_two_process_ddp_stop_and_resume_equals_one_run(tmp_path):
    from lit_llm.callbacks import ExactResume

    def trainer(root, steps, *callbacks):
        return pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_fork", max_steps=steps, logger=False,
                          enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                          callbacks=[ExactResume(), *callbacks])

    pl.seed_everything(0)
    reference = _RankNoisy()
    trainer(tmp_path / "ref", 12).fit(reference)  # 5 steps an epoch on each rank

    pl.seed_everything(0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True, save_top_k=0)
    trainer(tmp_path / "a", 7, ckpt).fit(_RankNoisy())
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["callbacks"]["ExactResume"]["rng"][1]
    pl.seed_everything(1)
    resumed = _RankNoisy()
    trainer(tmp_path / "b", 12).fit(resumed, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    for p, q in zip(reference.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)


def test_resuming_a_finished_run_writes_its_outputs_beside_the_earlier_ones(tmp_path):
    from jsonargparse import Namespace

    from lit_llm.cli import LitLLMCLI, _next_resume_index

    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "model.safetensors").write_bytes(b"")
    (tmp_path / "config.resume1.yaml").write_text("{}")
    cfg = Namespace(model=Namespace(class_path="x", init_args=Namespace(export_dir=None, report_dir=None)))
    LitLLMCLI._keep_earlier_outputs(cfg, tmp_path, _next_resume_index(tmp_path))
    assert cfg.model.init_args.export_dir == str(tmp_path / "export.resume2")
    assert cfg.model.init_args.report_dir is None  # no earlier reports: the default place is free
