"""The LoRA journey a user strings together: ``lit-llm fit`` with the callback (and WarmupSchedule, GlobalBatchSize)
-> a checkpoint holding only the adapters -> ``--ckpt_path last`` resume -> the merged artifact loaded in a fresh
process by ``pipeline()`` -> ``lit-llm export`` of the best adapter checkpoint gives the same model.

``lit-llm fit`` runs through its ``main`` in this process (starting Python with torch, Lightning, transformers and
peft costs more than each tiny run; the resume still starts from the checkpoint on disk, in a new Trainer);
``pipeline()`` runs in a fresh process, where a user loads the merged model with transformers alone."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from export_helpers import tiny_classifier_config
from lit_llm.cli import main
from lit_llm.training.lora import base_fingerprint

REPO = Path(__file__).resolve().parents[2]
TEXTS = ["good movie", "the film was really bad", "dull story and awful acting"]


def _fit(tmp_path: Path, config: Path, *extra: str) -> tuple[str, str]:
    """``lit-llm fit`` in this process, from ``tmp_path``: what it printed (stdout) and what Lightning's loggers
    logged (the callbacks' ``rank_zero_info``)."""
    out, err, logged, saved_cwd = io.StringIO(), io.StringIO(), io.StringIO(), os.getcwd()
    handler, lightning_logger = logging.StreamHandler(logged), logging.getLogger("lightning.pytorch")
    lightning_logger.addHandler(handler)
    os.chdir(tmp_path)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["fit", "--config", str(config), "--run_root", str(tmp_path / "runs"), "--run_name", "rt",
                         *extra])
    finally:
        os.chdir(saved_cwd)
        lightning_logger.removeHandler(handler)
    assert code == 0, out.getvalue()[-2000:] + err.getvalue()[-3000:]
    return out.getvalue(), logged.getvalue()


def _pipeline_scores(model_dirs: list[Path]) -> list[list[list[dict]]]:
    """``pipeline("text-classification")`` on each directory, in one new interpreter: every label's score per text."""
    script = (
        "import json, sys\n"
        "from transformers import pipeline\n"
        "out = [pipeline('text-classification', model=d, top_k=None)(json.loads(sys.argv[2]))\n"
        "       for d in json.loads(sys.argv[1])]\n"
        "print('RESULT' + json.dumps(out))\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", script, json.dumps([str(d) for d in model_dirs]), json.dumps(TEXTS)],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))[len("RESULT"):])


@pytest.fixture
def encoder_dir(tmp_path, tiny_tokenizer) -> Path:
    """A tiny pretrained encoder with its pooler, as sentence encoders such as all-MiniLM-L6-v2 ship it (the tiny
    masked-LM of conftest has none, and a pooler transformers initializes at random is not a pretrained base)."""
    from transformers import BertModel

    from conftest import tiny_bert_config

    torch.manual_seed(0)
    out = tmp_path / "encoder"
    BertModel(tiny_bert_config(len(tiny_tokenizer))).save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    return out


@pytest.mark.slow
def test_fit_resume_and_pipeline_of_the_merged_model(tmp_path, encoder_dir, sentiment_csvs):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tiny_bert_dir = encoder_dir
    config = tmp_path / "rt_lora.yaml"
    config.write_text(yaml.safe_dump(tiny_classifier_config(tiny_bert_dir, sentiment_csvs, [
        {"class_path": "lit_llm.callbacks.LoRA",
         "init_args": {"rank": 4, "alpha": 8, "dropout": 0.1, "export_merged": True}},
        {"class_path": "lit_llm.callbacks.WarmupSchedule", "init_args": {"warmup": 2}},
        {"class_path": "lit_llm.callbacks.GlobalBatchSize", "init_args": {"global_batch_size": 16}},
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"monitor": "val/loss", "save_top_k": 1, "save_last": True}},
    ], max_steps=3, val_check_interval=2, batch_size=8)))
    printed, logged = _fit(tmp_path, config)
    assert "of rank 4 on 12 Linear layers, head ['classifier']" in logged
    run = tmp_path / "runs" / "rt" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    keys = list(checkpoint["state_dict"])
    # Only the adapters (2 per adapted layer) and the trained copy of the head: no frozen base weight.
    assert len(keys) == 2 * 12 + 2
    assert all(".lora_A." in k or ".lora_B." in k or "classifier.modules_to_save." in k for k in keys), keys
    assert checkpoint["optimizer_states"][0]["state"]  # the optimizer state is kept
    assert "LoRA artifact:" in printed  # the CLI's closing summary names the adapters
    assert (run / "export-lora" / "adapter_model.safetensors").is_file()

    _fit(tmp_path, config, "--ckpt_path", "last", "--trainer.max_steps", "5")
    resumed = torch.load(last, weights_only=True)
    assert resumed["global_step"] == 5 and list(resumed["state_dict"]) == keys
    merged_dir = run / "export-lora-merged.resume1"  # the finished run's artifacts are kept beside
    assert (run / "export-lora.resume1" / "adapter_config.json").is_file()

    # The module ends the fit with its best checkpoint's weights (SequenceClassifier restores it at fit end), which
    # the LoRA callback folds into the merged model: the merged artifact is that checkpoint's model.
    (best,) = [p for p in (run / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt"]
    assert set(torch.load(best, weights_only=True)["state_dict"]) == set(keys)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["export", str(best), str(tmp_path / "exported")])
    assert code == 0, err.getvalue()
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "exported").eval()
    enc = AutoTokenizer.from_pretrained(tiny_bert_dir)(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = model(**enc).logits.softmax(-1)  # (3, 2)

    for scores in _pipeline_scores([merged_dir, tmp_path / "exported"]):
        for row, expected in zip(scores, probs.tolist(), strict=True):
            by_label = {item["label"]: item["score"] for item in row}
            assert by_label["fresh"] == pytest.approx(expected[0], abs=1e-4)
            assert by_label["rotten"] == pytest.approx(expected[1], abs=1e-4)


def test_export_refuses_adapters_of_another_base(tmp_path, encoder_dir):
    """A LoRA checkpoint's base is rebuilt from the hyper-parameters; a different one is refused, not exported."""
    from lit_llm.commands.export import CheckpointError, rebuild_module

    checkpoint = {
        "pytorch-lightning_version": "2.6.6", "state_dict": {},
        "hyper_parameters": {"_class_path": "lit_llm.modules.SequenceClassifier", "model": str(encoder_dir),
                             "labels": ["fresh", "rotten"]},
        "callbacks": {"LoRA{'rank': 2}": {"format": "lit_llm.lora", "model_attr": "model",
                                          "base_fingerprint": [1.0, 2.0],
                                          "spec": {"targets": ["bert.encoder.layer.0.attention.self.query"],
                                                   "rank": 2, "alpha": 4.0, "dropout": 0.0,
                                                   "head": ["classifier"], "quantize_base": None}}},
    }
    with pytest.raises(CheckpointError, match=r"ckpt holds LoRA adapters trained on another base model than "
                                              r"SequenceClassifier rebuilds from its hyper-parameters"):
        rebuild_module(checkpoint, source="x.ckpt")
    # With the right fingerprint, the missing adapters are what is reported.
    from lit_llm.modules import SequenceClassifier
    from lit_llm.training.lora import LoraSpec

    module = SequenceClassifier(str(encoder_dir), labels=["fresh", "rotten"])
    spec = checkpoint["callbacks"]["LoRA{'rank': 2}"]["spec"]
    checkpoint["callbacks"]["LoRA{'rank': 2}"]["base_fingerprint"] = base_fingerprint(
        module.model, LoraSpec.from_dict(spec))
    with pytest.raises(CheckpointError, match=r"the weights do not fit SequenceClassifier .*missing \['model\.bert"):
        rebuild_module(checkpoint, source="x.ckpt")


def test_export_cli_prints_the_lora_error(tmp_path, tiny_bert_dir):
    ckpt = tmp_path / "bad.ckpt"
    torch.save({"pytorch-lightning_version": "2.6.6", "state_dict": {}, "hyper_parameters": {
        "_class_path": "lit_llm.modules.SequenceClassifier", "model": str(tiny_bert_dir),
        "labels": ["fresh", "rotten"]},
        "callbacks": {"LoRA": {"format": "lit_llm.lora", "model_attr": "nothing_here", "spec": {}}}}, ckpt)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["export", str(ckpt), str(tmp_path / "out")])
    assert code == 2
    assert "was written with the LoRA callback, but its state names no model to adapt (model_attr 'nothing_here'" \
        in err.getvalue()
