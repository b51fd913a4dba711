"""``lit-llm export`` on the checkpoints our CLI and strategies write: best and last of a `lit-llm fit` run, a resumed
run's last checkpoint, and a user's own LightningModule given ``--module`` (a TransformerFSDP2 sharded directory:
tests/strategies/test_fsdp.py, on the checkpoint of its two-process run).
Each export is loaded in a fresh process with ``from_pretrained`` and gives the logits of the module in memory."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoTokenizer

from export_helpers import UserClassifier, fresh_process_logits, in_memory_logits, tiny_classifier_config
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
    config.write_text(yaml.safe_dump(tiny_classifier_config(tiny_bert_dir, sentiment_csvs, [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"monitor": "val/loss", "save_top_k": 1, "save_last": True}},
    ], max_steps=3, val_check_interval=1)))
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


_LM_CASES = {
    "masked": ("lit_llm.modules.MaskedLanguageModel", "AutoModelForMaskedLM", "wordpiece",
               {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                "intermediate_size": 37, "max_position_embeddings": 64}),
    "causal": ("lit_llm.modules.CausalLanguageModel", "AutoModelForCausalLM", "bpe",
               {"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 64}),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(_LM_CASES))
def test_a_pre_training_run_with_a_trained_tokenizer_exports_its_checkpoints(tmp_path, kind):
    """A language model built from a config dict is sized to the tokenizer the datamodule trains; the checkpoints
    carry that tokenizer, so `lit-llm export` and `load_from_checkpoint` rebuild the model from the file alone."""
    import importlib

    from lit_llm.modules.language_model import TOKENIZER_STATE_KEY

    class_path, auto_class, tokenizer_kind, model = _LM_CASES[kind]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"the film {i} was good and the story of ann in rome was long .\n" for i in range(40)))
    config = tmp_path / "pretrain.yaml"
    config.write_text(yaml.safe_dump({
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 3, "val_check_interval": 1,
                    "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"monitor": "val/loss", "save_top_k": 1, "save_last": True}}]},
        "model": {"class_path": class_path, "init_args": {"model": model}},
        "data": {"class_path": "lit_llm.datamodules.TextCorpusDataModule",
                 "init_args": {"data_files": str(corpus), "train_tokenizer": tokenizer_kind, "vocab_size": 120,
                               "block_size": 16, "batch_size": 4, "val_fraction": 0.2}},
    }))
    code, out, _ = _fit_in_process(tmp_path, config, "lm")
    assert code == 0, out
    run = tmp_path / "runs" / "lm" / "version_0"
    (best,) = [p for p in (run / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt"]
    module_class = getattr(importlib.import_module("lit_llm.modules"), class_path.rsplit(".", 1)[1])
    for path in (best, run / "checkpoints" / "last.ckpt"):
        checkpoint = torch.load(path, weights_only=True)  # plain data, tokenizer files included
        assert set(checkpoint[TOKENIZER_STATE_KEY]) >= {"tokenizer.json", "tokenizer_config.json"}
        code, err = _export(path, tmp_path / f"export_{path.stem}")
        assert code == 0, err
        # The reference is Lightning's own load_from_checkpoint, which the stored tokenizer makes work too.
        reference = module_class.load_from_checkpoint(path, map_location="cpu", weights_only=True)
        assert reference.tokenizer.get_vocab() == AutoTokenizer.from_pretrained(run / "tokenizer").get_vocab()
        ids = reference.tokenizer(["the film was good ."], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            expected = reference.model.eval()(input_ids=ids).logits
        script = (f"import json, sys, torch\nfrom transformers import {auto_class}, AutoTokenizer\n"
                  f"m = {auto_class}.from_pretrained(sys.argv[1]).eval()\n"
                  "ids = AutoTokenizer.from_pretrained(sys.argv[1])(['the film was good .'], return_tensors='pt')"
                  "['input_ids']\nwith torch.no_grad():\n"
                  "    print('RESULT' + json.dumps(m(input_ids=ids).logits.tolist()))\n")
        env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
        proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / f"export_{path.stem}")], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        loaded = torch.tensor(json.loads(proc.stdout.split("RESULT", 1)[1]))
        torch.testing.assert_close(loaded, expected, atol=1e-4, rtol=1e-4)

    # Damaged tokenizer files (a name that would leave the temporary directory) are refused with the file named.
    checkpoint = torch.load(best, weights_only=True)
    checkpoint[TOKENIZER_STATE_KEY] = {"../escape.json": "{}"}
    torch.save(checkpoint, tmp_path / "damaged.ckpt")
    code, err = _export(tmp_path / "damaged.ckpt", tmp_path / "export_damaged")
    assert code == 2 and not (tmp_path / "export_damaged").exists()
    assert f"damaged.ckpt: {class_path.rsplit('.', 1)[1]}: checkpoint['{TOKENIZER_STATE_KEY}'] is not the " \
           "tokenizer files lit-llm stores" in err
    assert "Traceback" not in err
    assert not (tmp_path / "escape.json").exists()
