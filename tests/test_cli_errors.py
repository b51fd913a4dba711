"""The `lit-llm` command's trust fixes: help lists every subcommand, user errors print one line (no traceback),
`--ckpt_path` files are checked by our safe loader before LightningCLI reads them, and piped output shows progress.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hostile_checkpoints import payload

from lit_llm.callbacks import PlainProgressBar
from lit_llm.training.checkpointing import CheckpointError
from lit_llm.cli import (
    EXTRA_SUBCOMMANDS,
    LIGHTNING_SUBCOMMANDS,
    LitLLMCLI,
    help_text,
    is_user_error,
    main,
    user_error,
)
from lit_llm.datamodules.files import DataFileError
from lit_llm.errors import InvalidArgumentError

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, tiny_bert_dir: Path, train_file: Path, val_file: Path, **trainer) -> Path:
    cfg = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": 4, "logger": False, "enable_checkpointing": False,
            "enable_model_summary": False, "num_sanity_val_steps": 0, "limit_val_batches": 1, **trainer,
        },
        "model": {"class_path": "lit_llm.modules.SequenceClassifier",
                  "init_args": {"model": str(tiny_bert_dir), "export": False}},
        "data": {"class_path": "lit_llm.datamodules.TextClassificationDataModule",
                 "init_args": {"tokenizer": str(tiny_bert_dir), "train_file": str(train_file),
                               "validation_file": str(val_file), "batch_size": 8}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _lit_llm(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("LIT_LLM_TRACEBACK", "WANDB_MODE")}
    environ.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "lit_llm.cli", *args, "--run_root", str(tmp_path / "runs")],
        cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=300, check=False,
    )


# ---------------------------------------------------------------------------------------------------- help
def test_help_lists_every_subcommand_with_a_line(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: lit-llm [-h] {fit,validate,test,predict,plan,export,tune} ...")
    for name, line in [*LIGHTNING_SUBCOMMANDS.items(), *((n, line) for n, (_, line) in EXTRA_SUBCOMMANDS.items())]:
        assert f"  {name} " in out and line in out
    assert "LIT_LLM_TRACEBACK=1" in out
    # every subcommand LightningCLI knows is listed; none is left out when Lightning adds one
    assert set(LitLLMCLI.subcommands()) == set(LIGHTNING_SUBCOMMANDS)
    assert main([]) == 2 and capsys.readouterr().err.strip() == help_text()


@pytest.mark.parametrize("name", sorted(EXTRA_SUBCOMMANDS))
def test_extra_subcommands_take_help(name, capsys):
    with pytest.raises(SystemExit) as info:
        main([name, "--help"])
    assert info.value.code == 0 and f"usage: lit-llm {name}" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------- user errors
def test_which_errors_are_the_users():
    assert is_user_error(DataFileError("x.csv: bad"))
    assert is_user_error(CheckpointError("a.ckpt: bad"))
    assert is_user_error(InvalidArgumentError("--x 3: must be even"))
    assert is_user_error(FileNotFoundError("train file 'x.csv' does not exist"))
    assert not is_user_error(FileNotFoundError(2, "No such file or directory", "/tmp/x"))  # from open(): maybe a bug
    assert not is_user_error(ValueError("too broad: could be a bug"))
    assert not is_user_error(KeyError("state_dict"))
    try:  # a wrapper raised *from* a user error reports the user error; an error *during* handling one does not
        raise ValueError("Does not validate against any of the Union subtypes") from DataFileError("x.csv: bad")
    except ValueError as wrapper:
        assert str(user_error(wrapper)) == "x.csv: bad"
    try:
        try:
            raise DataFileError("x.csv: bad")
        except DataFileError:
            raise KeyError("a bug while handling it") from None
    except KeyError as bug:
        assert user_error(bug) is None


def test_a_user_error_prints_one_line_and_exits_2(tmp_path, tiny_bert_dir, sentiment_csvs, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LIT_LLM_TRACEBACK", raising=False)
    missing = tmp_path / "nope.csv"
    config = _config(tmp_path, tiny_bert_dir, missing, sentiment_csvs["val"], enable_progress_bar=False)
    assert main(["fit", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"lit-llm: train file {str(missing)!r} does not exist (resolved from" in err
    monkeypatch.setenv("LIT_LLM_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["fit", "--config", str(config)])


def test_an_invalid_callback_argument_prints_one_line(tmp_path, tiny_bert_dir, sentiment_csvs, capsys, monkeypatch):
    # jsonargparse wraps the callback's error in its own ValueError; the user's message is the one printed.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LIT_LLM_TRACEBACK", raising=False)
    bar = {"class_path": "lit_llm.callbacks.PlainProgressBar", "init_args": {"every_n_steps": -1}}
    config = _config(tmp_path, tiny_bert_dir, sentiment_csvs["train"], sentiment_csvs["val"], callbacks=[bar])
    assert main(["fit", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lit-llm: PlainProgressBar(every_n_steps=-1, every_n_seconds=30.0): intervals must be >= 0")
    assert "Union subtypes" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_subprocess_malformed_data_file(tmp_path, tiny_bert_dir, sentiment_csvs, monkeypatch):
    """A real process: one line on stderr, exit 2, no traceback (the missing-file case runs in-process above)."""
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "good", "label": "p"}\n{"text": "bad", "label"\n')
    config = _config(tmp_path, tiny_bert_dir, broken, sentiment_csvs["val"])
    proc = _lit_llm(tmp_path, "fit", "--config", str(config))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"lit-llm: train file {str(broken)!r} could not be read as jsonl" in proc.stderr
    assert "Traceback" not in proc.stderr

    monkeypatch.chdir(tmp_path)  # LIT_LLM_TRACEBACK=1 lets the error through, traceback and all (in-process here)
    monkeypatch.setenv("LIT_LLM_TRACEBACK", "1")
    with pytest.raises(DataFileError, match="train file .* could not be read as jsonl"):
        main(["fit", "--config", str(config)])


# ---------------------------------------------------------------------------------------------------- --ckpt_path
MARKER_CODE = "open({marker!r}, 'w').write('code ran')"


def _hostile(kind: str, tmp_path: Path, marker: Path) -> object:
    return payload(kind, marker, tmp_path, "hostile_module")  # __import__: tmp_path is on sys.path in these tests


def _bad_checkpoint(kind: str, tmp_path: Path) -> tuple[Path, Path, str]:
    """``(file, marker, message excerpt)`` of a checkpoint that must be refused before anything reads it."""
    marker = tmp_path / f"marker_{kind}"
    path = tmp_path / f"{kind}.ckpt"
    if kind == "corrupt":
        path.write_bytes(b"PK\x03\x04 this is not a zip file, nor a pickle")
        return path, marker, "It may be truncated (a kill during save)"
    if kind == "not_a_checkpoint":
        torch.save({"weight": torch.zeros(2)}, path)  # plain weights: no state_dict / hyper_parameters
        return path, marker, "is not a Lightning checkpoint: no 'state_dict'"
    checkpoint = {"state_dict": {}, "hyper_parameters": {"lr": _hostile(kind, tmp_path, marker)}}
    torch.save(checkpoint, path)
    return path, marker, "it needs the unsafe globals"


HOSTILE = ["exec", "eval", "os.system", "subprocess.call", "__import__"]


@pytest.mark.parametrize("kind", ["corrupt", "not_a_checkpoint", *HOSTILE])
def test_ckpt_path_is_checked_by_our_loader_first(kind, tmp_path, tiny_bert_dir, sentiment_csvs, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # where hostile_module.py would be found
    path, marker, excerpt = _bad_checkpoint(kind, tmp_path)
    config = _config(tmp_path, tiny_bert_dir, sentiment_csvs["train"], sentiment_csvs["val"])
    assert main(["fit", "--config", str(config), "--ckpt_path", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lit-llm: {path}") and excerpt in err, err
    assert "weights_only` set to `False" not in err and "weights_only=False" not in err
    assert not marker.exists()
    assert not (tmp_path / "runs").exists()  # refused before a run directory is made
    assert "hostile_module" not in sys.modules


def test_a_checkpoint_written_by_lit_llm_fit_resumes(tmp_path, tiny_bert_dir, sentiment_csvs, monkeypatch):
    # The checks above must not refuse our own checkpoints: their hyperparameters name our module's class path.
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, tiny_bert_dir, sentiment_csvs["train"], sentiment_csvs["val"], max_steps=1,
                     enable_checkpointing=True, enable_progress_bar=False)
    assert main(["fit", "--config", str(config)]) == 0
    (ckpt,) = (tmp_path / "runs" / "tiny" / "version_0" / "checkpoints").glob("*.ckpt")
    hparams = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert hparams["_class_path"].startswith("lit_llm.modules.")
    cli = LitLLMCLI(args=["fit", "--config", str(config), "--ckpt_path", str(ckpt), "--trainer.max_steps", "2"])
    assert cli.trainer.global_step == 2 and cli.run_dir == tmp_path / "runs" / "tiny" / "version_0"


def test_ckpt_path_naming_a_module_to_import_is_refused(tmp_path, tiny_bert_dir, sentiment_csvs, capsys, monkeypatch):
    # Plain data (weights_only passes), but LightningCLI would import the module of every class path it names.
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    marker = tmp_path / "marker_import"
    (tmp_path / "hostile_module.py").write_text(MARKER_CODE.format(marker=str(marker)) + "\n")
    config = _config(tmp_path, tiny_bert_dir, sentiment_csvs["train"], sentiment_csvs["val"])
    for hparams in ({"_class_path": "hostile_module.Model", "lr": 0.1},
                    {"optimizer": {"class_path": "hostile_module.Optimizer"}}):
        path = tmp_path / "names_a_module.ckpt"
        torch.save({"state_dict": {}, "hyper_parameters": hparams}, path)
        assert main(["fit", "--config", str(config), "--ckpt_path", str(path)]) == 2
        err = capsys.readouterr().err
        assert f"lit-llm: {path}: its hyper_parameters name the class 'hostile_module." in err
        assert "which this run has not imported" in err
    assert not marker.exists() and "hostile_module" not in sys.modules


@pytest.mark.slow
def test_subprocess_hostile_ckpt_path_runs_no_code(tmp_path, tiny_bert_dir, sentiment_csvs):
    config = _config(tmp_path, tiny_bert_dir, sentiment_csvs["train"], sentiment_csvs["val"])
    for path, marker, excerpt in [_bad_checkpoint("os.system", tmp_path)]:  # the other payloads: in-process above
        proc = _lit_llm(tmp_path, "fit", "--config", str(config), "--ckpt_path", str(path))
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert f"lit-llm: {path}" in proc.stderr and excerpt in proc.stderr
        assert "Traceback" not in proc.stderr and "weights_only=False" not in proc.stderr
        assert not marker.exists()


# ---------------------------------------------------------------------------------------------------- progress
@pytest.mark.slow
def test_piped_stdout_gets_plain_progress_lines(tmp_path, tiny_bert_dir, sentiment_csvs):
    config = _config(tmp_path, tiny_bert_dir, sentiment_csvs["train"], sentiment_csvs["val"], max_steps=3)
    proc = _lit_llm(tmp_path, "fit", "--config", str(config))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert "train: 3 optimizer steps from step 0; a line every 50 steps or every 30 s" in lines
    assert any(line.startswith("train step 3/3 (100%) | epoch 0 | loss ") for line in lines), proc.stdout
    assert any(line.startswith("train: done, step 3 after") for line in lines)
    # a config that turns the bar off, or names its own, gets no plain lines
    quiet = _config(tmp_path, tiny_bert_dir, sentiment_csvs["train"], sentiment_csvs["val"], max_steps=1,
                    enable_progress_bar=False)
    own = _config(tmp_path, tiny_bert_dir, sentiment_csvs["train"], sentiment_csvs["val"], max_steps=1,
                  callbacks=[{"class_path": "lightning.pytorch.callbacks.TQDMProgressBar"}])
    from lightning.pytorch.callbacks import TQDMProgressBar

    for path, bar in ((quiet, None), (own, TQDMProgressBar)):
        cli = LitLLMCLI(args=["fit", "--config", str(path), "--run_root", str(tmp_path / "runs")])
        assert not any(isinstance(cb, PlainProgressBar) for cb in cli.trainer.callbacks)
        assert bar is None or isinstance(cli.trainer.progress_bar_callback, bar)
