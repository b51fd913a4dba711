"""``lit-llm export`` on the checkpoints our CLI and strategies write: best and last of a `lit-llm fit` run, a resumed
run's last checkpoint, and a user's own LightningModule given ``--module`` (a TransformerFSDP2 sharded directory:
tests/strategies/test_fsdp.py, on the checkpoint of its two-process run).
Each export is loaded in a fresh process with ``from_pretrained`` and gives the logits of the module in memory."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from export_helpers import UserClassifier, fresh_process_logits, in_memory_logits
from lit_llm.cli import main
from lit_llm.commands.export import CheckpointError, load_checkpoint, rebuild_module
from tests.test_resume import _fit_in_process

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def _export(*args: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["export", *map(str, args)])
    return code, err.getvalue()


def _fit(tmp_path: Path, config: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(REPO)]), OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    proc = subprocess.run(
        [sys.executable, "-m", "lit_llm.cli", "fit", "--config", str(config), "--run_root", str(tmp_path / "runs"),
         "--run_name", "rt", *extra],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_best_last_and_resumed_checkpoints_of_lit_llm_fit_export(tmp_path, tiny_bert_dir, sentiment_csvs):
    from lit_llm.modules import SequenceClassifier

    config = tmp_path / "rt.yaml"
    config.write_text(yaml.safe_dump({
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": 3, "val_check_interval": 1, "limit_val_batches": 1,
            "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"monitor": "val/loss", "save_top_k": 1, "save_last": True}}],
        },
        "model": {"class_path": "lit_llm.modules.SequenceClassifier",
                  "init_args": {"model": str(tiny_bert_dir), "optimizer": {
                      "class_path": "torch.optim.AdamW", "init_args": {"lr": 0.01}}}},
        "data": {"class_path": "lit_llm.datamodules.TextClassificationDataModule",
                 "init_args": {"tokenizer": str(tiny_bert_dir), "train_file": str(sentiment_csvs["train"]),
                               "validation_file": str(sentiment_csvs["val"]), "batch_size": 16}},
    }))
    first = _fit(tmp_path, config)
    checkpoints = tmp_path / "runs" / "rt" / "version_0" / "checkpoints"
    assert "loaded the best checkpoint" in first.stdout + first.stderr  # the fit-end reload, through our loader
    kept = tmp_path / "first_run"
    shutil.copytree(checkpoints, kept)  # the resume overwrites last.ckpt
    (best,) = [p for p in kept.glob("*.ckpt") if p.name != "last.ckpt"]
    code, _, _ = _fit_in_process(tmp_path, config, "rt", "--ckpt_path", "last", "--trainer.max_steps", "5")
    assert code == 0
    resumed = checkpoints / "last.ckpt"

    cases = {"best": best, "last": kept / "last.ckpt", "resumed": resumed}
    steps = {name: torch.load(path, weights_only=True)["global_step"] for name, path in cases.items()}
    assert steps["last"] == 3 and steps["resumed"] == 5
    references, exports = [], []
    for name, path in cases.items():
        # The CLI's checkpoints are plain data: the loader's allowlist is not what makes them load.
        assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == []
        assert load_checkpoint(path)["hyper_parameters"]["_class_path"] == "lit_llm.modules.SequenceClassifier"
        code, err = _export(path, tmp_path / f"export_{name}")
        assert code == 0, err
        # Reference: Lightning's own load_from_checkpoint, not our rebuild.
        reference = SequenceClassifier.load_from_checkpoint(path, map_location="cpu", weights_only=True)
        references.append(in_memory_logits(reference.model, tmp_path / f"export_{name}"))
        exports.append(tmp_path / f"export_{name}")
    assert not torch.allclose(references[1], references[2]), "the resumed run trained further"

    for reference, loaded in zip(references, fresh_process_logits(exports), strict=True):
        assert loaded["id2label"] == {"0": "fresh", "1": "rotten"}
        assert torch.allclose(torch.tensor(loaded["logits"]), reference, atol=1e-4)

    # A checkpoint of another module than --module names both.
    code, err = _export(best, tmp_path / "wrong", "--module", "lit_llm.modules.TokenClassifier")
    assert code == 2 and not (tmp_path / "wrong").exists()
    assert "holds a lit_llm.modules.SequenceClassifier (its hyper_parameters['_class_path']), not a " \
           "lit_llm.modules.TokenClassifier (--module)" in err


def test_a_users_own_module_exports_with_module(tmp_path, tiny_bert_dir):
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    module = UserClassifier(str(tiny_bert_dir), data_dir=tmp_path / "data")
    batch = dict(module.tokenizer(["good movie", "bad film"], padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([0, 1])
    trainer = pl.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, DataLoader([batch] * 3, batch_size=None))
    ckpt = tmp_path / "user.ckpt"
    trainer.save_checkpoint(ckpt)

    code, err = _export(ckpt, tmp_path / "no_module")
    assert code == 2 and "does not say which LightningModule wrote it" in err and "pass --module" in err
    code, err = _export(ckpt, tmp_path / "hf", "--module", "export_helpers.UserClassifier")
    assert code == 0, err
    (loaded,) = fresh_process_logits([tmp_path / "hf"])
    reference = in_memory_logits(module.model, tmp_path / "hf")
    assert torch.allclose(torch.tensor(loaded["logits"]), reference, atol=1e-4)


def test_the_module_class_is_validated_before_anything_is_imported(tmp_path):
    state = {"state_dict": {}, "hyper_parameters": {}}
    for class_path, message in [
        ("os.system", r"'os.system' is not a LightningModule subclass"),
        ("antigravity.Fly", r"'antigravity.Fly' is not a LightningModule subclass"),
        ("x; import os", r"'x; import os' is not a class path"),
        ("lit_llm.commands.export.CheckpointError",
         r"'lit_llm.commands.export.CheckpointError' is not a LightningModule subclass"),
        ("no_such_package_xyz.Module", r"'no_such_package_xyz.Module' cannot be imported .*PYTHONPATH"),
    ]:
        state["hyper_parameters"] = {"_class_path": class_path}
        with pytest.raises(CheckpointError, match=r"ckpt: hyper_parameters\['_class_path'\] " + message):
            rebuild_module(state, source="ckpt")
    assert "antigravity" not in sys.modules  # a stdlib module named by a checkpoint is never imported
    with pytest.raises(CheckpointError, match=r"--module 'torch.nn.Linear' is not a LightningModule subclass"):
        rebuild_module(state, "torch.nn.Linear")


def test_hyper_parameters_or_weights_that_do_not_fit_the_class(tmp_path, tiny_bert_dir):
    hparams = {"_class_path": "lit_llm.modules.SequenceClassifier", "model": str(tiny_bert_dir), "labels": ["a", "b"]}
    with pytest.raises(CheckpointError, match=r"ckpt: the weights do not fit SequenceClassifier built from its "
                                              r"hyper-parameters \(missing \['model\..*unexpected \['layer.weight'\]"):
        rebuild_module({"state_dict": {"layer.weight": torch.zeros(1)}, "hyper_parameters": hparams}, source="ckpt")
    hparams["model"] = str(tmp_path / "gone")  # the base model a checkpoint names must be reachable
    with pytest.raises(CheckpointError, match=r"ckpt: lit_llm.modules.sequence_classification.SequenceClassifier "
                                              r"cannot be built from the checkpoint's hyper-parameters \("):
        rebuild_module({"state_dict": {}, "hyper_parameters": hparams}, source="ckpt")
