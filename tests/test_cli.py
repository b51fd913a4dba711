"""The `lit-llm` command end to end on a tiny model: fit + test from YAML, export, W&B read-back, configs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lit_llm.cli import LitLLMCLI, configure_wandb_mode, main, next_run_dir

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path, tiny_bert_dir, csvs, *, wandb=False, lr=3e-3, extra_callbacks=(), max_epochs=3):
    callbacks = [
        {"class_path": "lit_llm.callbacks.WarmupSchedule", "init_args": {"warmup": 2}},
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"monitor": "val/accuracy", "mode": "max", "save_top_k": 1},
        },
        *extra_callbacks,
    ]
    trainer = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": max_epochs,
        "log_every_n_steps": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "callbacks": callbacks,
        "logger": False,
    }
    if wandb:
        trainer["logger"] = {
            "class_path": "lightning.pytorch.loggers.WandbLogger",
            "init_args": {"project": "lit-llm-test", "offline": True},
        }
    cfg = {
        "seed_everything": 0,
        "trainer": trainer,
        "model": {
            "class_path": "lit_llm.modules.SequenceClassifier",
            "init_args": {
                "model": str(tiny_bert_dir),
                "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": lr}},
            },
        },
        "data": {
            "class_path": "lit_llm.datamodules.TextClassificationDataModule",
            "init_args": {
                "tokenizer": str(tiny_bert_dir),
                "train_file": str(csvs["train"]),
                "validation_file": str(csvs["val"]),
                "test_file": str(csvs["test"]),
                "batch_size": 16,
            },
        },
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_fit_and_test_in_a_subprocess_with_wandb(tmp_path, tiny_bert_dir, sentiment_csvs):
    config = _config(tmp_path, tiny_bert_dir, sentiment_csvs, wandb=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")  # no WANDB_MODE, no key: the CLI must go offline itself
    env["HOME"] = str(tmp_path)  # no ~/.netrc with a W&B key
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lit_llm.cli",
            "fit",
            "--config",
            str(config),
            "--test_after_fit",
            "true",
            "--run_root",
            str(tmp_path / "runs"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    run_dir = tmp_path / "runs" / "tiny" / "version_0"
    assert f"run directory:    {run_dir}" in out
    assert "best checkpoint:  " + str(run_dir / "checkpoints") in out
    assert f"exported model:   {run_dir / 'export'}" in out
    assert f"report:           {run_dir / 'reports' / 'classification_report.txt'}" in out
    assert "Classification report (test):" in out + proc.stderr and "weighted avg" in out + proc.stderr
    assert (run_dir / "config.yaml").is_file()
    # where the wall time went, each stage of fit and of the test after it (issue 17: time outside the loop)
    time_line = next(line for line in out.splitlines() if line.startswith("time:"))
    for stage in ("start-up", "data setup", "model setup", "training loop", "validation", "fit end", "test"):
        assert f"{stage} " in time_line, time_line

    from transformers import pipeline

    clf = pipeline("text-classification", model=str(run_dir / "export"), device="cpu")
    assert clf("the film was brilliant")[0]["label"] in ("fresh", "rotten")

    from lit_llm.tracking.wandb_offline import read_offline_run

    run = read_offline_run(run_dir / "wandb")
    assert run.series("train/loss_step"), run.history[:3]
    assert len(run.series("val/accuracy")) == 3  # one per epoch
    assert 0.0 <= run.summary["test/accuracy"] <= 1.0
    assert run.summary["test/accuracy"] == pytest.approx(
        json.loads((run_dir / "reports" / "classification_report.json").read_text())["accuracy"], abs=1e-6
    )
    assert run.config["cli"]["model"]["init_args"]["model"] == str(tiny_bert_dir)  # the full CLI config
    assert "train/lr" in run.summary


def test_every_config_parses(capsys):
    # configs/tune/ holds `lit-llm tune --search` spaces, not fit configs: tests/test_tune.py checks each against
    # the config it searches.
    configs = sorted(p for p in (REPO / "configs").rglob("*.yaml") if p.parent.name != "tune")
    assert configs, "configs/ must hold the YAML configs"
    for path in configs:
        subcommand = "fit"
        with pytest.raises(SystemExit) as exit_info:
            LitLLMCLI(args=[subcommand, "--config", str(path), "--print_config"])
        assert exit_info.value.code in (0, None), path
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["model"]["class_path"].startswith(("lit_llm.", "lightning")), path


def test_the_tensorboard_config_is_the_main_job_with_other_loggers():
    main = yaml.safe_load((REPO / "configs/finetune/minilm_rotten_tomatoes.yaml").read_text())
    tensorboard = yaml.safe_load((REPO / "configs/finetune/minilm_rotten_tomatoes_tensorboard.yaml").read_text())
    loggers = [logger["class_path"].rsplit(".", 1)[-1] for logger in tensorboard["trainer"].pop("logger")]
    assert loggers == ["TensorBoardLogger", "CSVLogger"]
    main["trainer"].pop("logger")
    assert tensorboard == main


def test_unknown_config_key_is_an_error(tmp_path, tiny_bert_dir, sentiment_csvs, capsys):
    config = yaml.safe_load(_config(tmp_path, tiny_bert_dir, sentiment_csvs).read_text())
    config["model"]["init_args"]["learning_rat"] = 0.1
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exit_info:
        LitLLMCLI(args=["fit", "--config", str(path)])
    assert exit_info.value.code != 0
    assert "learning_rat" in capsys.readouterr().err


def test_early_stopping_on_a_plateau(tmp_path, tiny_bert_dir, sentiment_csvs, monkeypatch):
    # lr=0: the validation loss never improves, so EarlyStopping(patience=1) ends the run after 2 epochs of 10.
    stop = {
        "class_path": "lightning.pytorch.callbacks.EarlyStopping",
        "init_args": {"monitor": "val/loss", "mode": "min", "patience": 1},
    }
    config = _config(tmp_path, tiny_bert_dir, sentiment_csvs, lr=0.0, extra_callbacks=[stop], max_epochs=10)
    monkeypatch.chdir(tmp_path)
    cli = LitLLMCLI(args=["fit", "--config", str(config), "--data.init_args.train_file", str(sentiment_csvs["val"])])
    assert cli.trainer.should_stop
    assert cli.trainer.current_epoch == 2  # epoch 0 sets the best, epochs 1 is no better -> stop
    assert cli.run_dir == tmp_path / "runs" / "tiny" / "version_0"
    from lit_llm.training.checkpointing import AtomicCheckpointIO

    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)  # checkpoints written atomically


def test_a_later_run_in_the_same_process_counts_only_its_own_start_up(tmp_path, tiny_bert_dir, sentiment_csvs,
                                                                       monkeypatch):
    # `lit-llm tune` runs its trials in one process: trial 2's start-up must not include trial 1.
    import time

    from lit_llm.callbacks.stage_times import process_start_time

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(LitLLMCLI, "_ran_in_process", False)  # as in a fresh process
    config = _config(tmp_path, tiny_bert_dir, sentiment_csvs, max_epochs=1)
    started = process_start_time()
    assert started is not None
    first_begin = time.time()
    first = LitLLMCLI(args=["fit", "--config", str(config), "--run_name", "first"])
    assert first.stage_times.seconds["startup"] >= first_begin - started  # the first run's imports count
    second_begin = time.time()
    second = LitLLMCLI(args=["fit", "--config", str(config), "--run_name", "second"])
    assert 0 <= second.stage_times.seconds["startup"] <= time.time() - second_begin


def test_predict_writes_jsonl(tmp_path, tiny_bert_dir, sentiment_csvs, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, tiny_bert_dir, sentiment_csvs)
    pred = tmp_path / "pred.csv"
    pred.write_text("text\ngood movie\nbad film\n")
    cli = LitLLMCLI(
        args=[
            "predict",
            "--config",
            str(config),
            "--data.init_args.predict_file",
            str(pred),
            "--model.init_args.labels",
            "[fresh, rotten]",
        ]
    )
    lines = (cli.run_dir / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["text"] for line in lines] == ["good movie", "bad film"]
    assert all(json.loads(line)["label"] in ("fresh", "rotten") for line in lines)


def test_run_directories_are_never_reused(tmp_path):
    assert next_run_dir(tmp_path, "exp") == tmp_path / "exp" / "version_0"
    (tmp_path / "exp" / "version_0").mkdir(parents=True)
    (tmp_path / "exp" / "version_7").mkdir()
    assert next_run_dir(tmp_path, "exp") == tmp_path / "exp" / "version_8"


def test_wandb_mode(tmp_path):
    env = {"NETRC": str(tmp_path / "none")}
    assert configure_wandb_mode(env) == "offline" and env["WANDB_MODE"] == "offline"
    env = {"WANDB_MODE": "online"}
    assert configure_wandb_mode(env) == "online"
    env = {"WANDB_API_KEY": "x" * 40, "NETRC": str(tmp_path / "none")}
    assert configure_wandb_mode(env) == "online" and "WANDB_MODE" not in env


def test_unknown_extra_subcommand_is_reported(capsys):
    with pytest.raises(SystemExit):
        main(["frobnicate"])
    assert "frobnicate" in capsys.readouterr().err


def test_nothing_in_the_library_imports_the_entry_point():
    """Only `lit-llm` (lit_llm/cli.py) imports everything; no module of lit_llm imports it back, the commands/
    modules that hold its steps included (`lit-llm tune` runs each trial with lit_llm.commands.lightning_cli)."""
    import ast

    offenders = []
    for path in sorted((REPO / "lit_llm").rglob("*.py")):
        if path == REPO / "lit_llm" / "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if any(name == "lit_llm.cli" or name.startswith("lit_llm.cli.") for name in names):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, offenders


def test_summary_lists_every_output_in_order(tmp_path):
    from types import SimpleNamespace

    from lightning.pytorch.loggers import CSVLogger

    from lit_llm.callbacks import StageTimes
    from lit_llm.commands.summary import summary_lines

    checkpoint = SimpleNamespace(best_model_path="b.ckpt", best_model_score=0.5, monitor="val/f1", last_model_path="")
    pruning = type("Pruning", (), {"report_path": "r.md", "artifact_path": "a.pt"})()
    times = StageTimes()
    times.seconds = {"data": 1.0, "training": 10.0, "validation": 2.0}
    trainer = SimpleNamespace(checkpoint_callback=checkpoint, loggers=[CSVLogger(tmp_path, name="", version="")],
                              callbacks=[SimpleNamespace(written="p.jsonl"), pruning, times])
    model = SimpleNamespace(export_path="export", report_path=None)
    assert summary_lines(tmp_path / "run", trainer, model) == [
        f"run directory:    {tmp_path / 'run'}",
        "best checkpoint:  b.ckpt (val/f1=0.5000)",
        "exported model:   export",
        "predictions:      p.jsonl",
        "Pruning report: r.md",
        "Pruning artifact: a.pt",
        f"CSV metrics:      {tmp_path / 'metrics.csv'}",
        "time:             data setup 1.0 s, training loop 10.0 s, validation 2.0 s (total 13.0 s)",
    ]
