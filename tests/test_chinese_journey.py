"""The Chinese path as a user runs it, at tiny size: prepare the data, pre-train with whole-word masking from the
config, fine-tune sentiment and NER from that run's export with their configs, and serve both in a fresh process.

The preparation script and the three ``lit-llm fit`` runs go through their ``main`` in this process, as
tests/test_readme.py runs the README's commands (starting Python with torch, Lightning and transformers costs more
than each tiny run; each run still gets its own run directory); the serving is in a fresh process, where a user
loads the exports with transformers alone."""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from chinese_helpers import write_sentiment_dir, write_tagged

REPO = Path(__file__).resolve().parents[1]
# the config's architecture (RoFormer), shrunk
TINY_MODEL = ("{model_type: roformer, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, "
              "intermediate_size: 37, max_position_embeddings: 512}")
QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]


def run(args: list[str], cwd: Path) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def fit(args: list[str], cwd: Path) -> str:
    """``lit-llm fit ARGS`` in this process, from ``cwd``: what it printed on stdout (its closing summary)."""
    from lit_llm.cli import main

    out, err, saved_cwd = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["fit", *args])
    finally:
        os.chdir(saved_cwd)
    assert code == 0, out.getvalue()[-3000:] + err.getvalue()[-3000:]
    return out.getvalue()


@pytest.mark.slow
def test_prepare_pretrain_finetune_and_serve(tmp_path, monkeypatch):
    python = sys.executable
    monkeypatch.chdir(tmp_path)  # the script writes data/zh under the current directory, as a user runs it
    prepare = runpy.run_path(str(REPO / "scripts" / "prepare_chinese.py"), run_name="prepare_chinese")["main"]
    assert prepare(["--tagged", str(write_tagged(tmp_path / "pd.txt", repeat=10)), "--sentiment-dir",
                    str(write_sentiment_dir(tmp_path / "senti")), "--fractions", "0.6", "0.2", "0.2"]) == 0
    out = fit(["--config", str(REPO / "configs/pretrain/bert_zh_wwm.yaml"), *QUIET,
               "--trainer.max_steps", "2", "--trainer.val_check_interval", "1", "--model.init_args.model", TINY_MODEL,
               "--data.init_args.vocab_size", "300", "--data.init_args.batch_size", "4",
               "--data.init_args.num_proc", "null"], tmp_path)
    export = tmp_path / "runs" / "bert_zh_wwm" / "version_0" / "export"
    assert f"exported model:   {export}" in out
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(export)
    assert tokenizer.tokenize("北京新年") == ["北", "京", "新", "年"]  # character-level

    # the README's one config change for ALBERT's sentence-order prediction (RoFormer: lit-llm's pair head)
    sop = ["--model.init_args.nsp", "true", "--model.init_args.nsp_negatives", "swapped", "--data.init_args.nsp",
           "true", "--data.init_args.nsp_negatives", "swapped"]
    fit(["--config", str(REPO / "configs/pretrain/bert_zh_wwm.yaml"), *QUIET, "--run_name", "zh_sop",
         "--trainer.max_steps", "2", "--trainer.val_check_interval", "1", "--model.init_args.model", TINY_MODEL,
         "--data.init_args.vocab_size", "300", "--data.init_args.batch_size", "4", "--data.init_args.num_proc", "null",
         *sop], tmp_path)
    assert (tmp_path / "runs" / "zh_sop" / "version_0" / "export" / "model.safetensors").exists()

    for task in ("sentiment", "ner"):
        out = fit(["--config", str(REPO / f"configs/finetune/bert_zh_{task}.yaml"), *QUIET,
                   "--trainer.max_epochs", "1", "--test_after_fit", "true"], tmp_path)
        assert f"exported model:   {tmp_path / 'runs' / f'bert_zh_{task}' / 'version_0' / 'export'}" in out

    # a fresh process serves both fine-tuned models with transformers alone
    script = (
        "import json; from transformers import pipeline\n"
        "clf = pipeline('text-classification', model='runs/bert_zh_sentiment/version_0/export', device='cpu')\n"
        "ner = pipeline('token-classification', model='runs/bert_zh_ner/version_0/export', device='cpu')\n"
        "print(json.dumps({'sentiment': clf('质量不错，物流很快。')[0]['label'],\n"
        "                  'ner': sorted({e['entity'].split('-')[-1] for e in ner('李鹏在北京考察企业')})}))\n"
    )
    result = json.loads(run([python, "-c", script], tmp_path).strip().splitlines()[-1])
    assert result["sentiment"] in ("negative", "positive")
    assert set(result["ner"]) <= {"O", "PER", "LOC", "ORG"}
