"""TensorBoard and CSV loggers next to W&B: the CLI's summary names each, and report figures reach every logger
that takes images (read back from the TensorBoard event file and the W&B offline run)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lit_llm.cli import LitLLMCLI, logger_locations
from lit_llm.tracking.reports import log_figure, plot_confusion_matrix
from tests.test_cli import _config

TENSORBOARD = {
    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
    "init_args": {"save_dir": ".", "name": "tensorboard", "version": ""},
}
CSV = {
    "class_path": "lightning.pytorch.loggers.CSVLogger",
    "init_args": {"save_dir": ".", "name": "csv", "version": ""},
}


def _event_accumulator(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def test_cli_fit_with_tensorboard_and_csv_loggers(tmp_path, tiny_bert_dir, sentiment_csvs, monkeypatch, capsys):
    config_path = _config(tmp_path, tiny_bert_dir, sentiment_csvs, max_epochs=1)
    config = yaml.safe_load(config_path.read_text())
    config["trainer"]["logger"] = [TENSORBOARD, CSV]
    config_path.write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    cli = LitLLMCLI(args=["fit", "--config", str(config_path), "--test_after_fit", "true"])
    run_dir = tmp_path / "runs" / "tiny" / "version_0"
    assert cli.run_dir == run_dir
    out = capsys.readouterr().out
    assert f"TensorBoard:      {run_dir / 'tensorboard'} (tensorboard --logdir {run_dir / 'tensorboard'})" in out
    assert f"CSV metrics:      {run_dir / 'csv' / 'metrics.csv'}" in out

    events = _event_accumulator(run_dir / "tensorboard")
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss_step", "val/accuracy", "val/loss", "test/accuracy", "test/f1_macro"} <= scalars, scalars
    assert events.Scalars("test/accuracy")[-1].value == pytest.approx(float(cli.model.test_report["accuracy"]))
    [image] = events.Images("test/confusion_matrix")
    from PIL import Image

    png = run_dir / "reports" / "confusion_matrix.png"
    with Image.open(io.BytesIO(image.encoded_image_string)) as logged, Image.open(png) as saved:
        assert logged.size == saved.size == (image.width, image.height)

    with (run_dir / "csv" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert any(row.get("val/accuracy") for row in rows) and any(row.get("test/accuracy") for row in rows)


@pytest.mark.slow
def test_log_figure_reaches_wandb_and_skips_csv(tmp_path):
    import torch
    from lightning.pytorch.loggers import WandbLogger

    png = plot_confusion_matrix(torch.tensor([[3, 1], [0, 4]]), ["neg", "pos"], tmp_path / "cm.png")
    wandb = WandbLogger(project="lit-llm-test", offline=True, save_dir=str(tmp_path))
    tensorboard = TensorBoardLogger(tmp_path, name="tb", version="")
    loggers = [CSVLogger(tmp_path, name="csv"), tensorboard, wandb]
    assert log_figure(loggers, "test/confusion_matrix", png, step=3) == ["TensorBoardLogger", "WandbLogger"]
    assert [e.step for e in _event_accumulator(tensorboard.log_dir).Images("test/confusion_matrix")] == [3]
    files = wandb.experiment.dir  # .../wandb/offline-run-<id>/files: W&B copies each logged image under media/
    wandb.experiment.finish()
    [logged] = (Path(files) / "media" / "images" / "test").glob("confusion_matrix_*.png")
    assert logged.read_bytes() == png.read_bytes()


def test_logger_locations_name_every_logger(tmp_path):
    class Custom:
        save_dir = str(tmp_path / "custom")

    lines = logger_locations([TensorBoardLogger(tmp_path, name="tb", version=""), CSVLogger(tmp_path, name="csv",
                                                                                            version=""), Custom()])
    assert lines == [
        f"TensorBoard:      {tmp_path / 'tb'} (tensorboard --logdir {tmp_path / 'tb'})",
        f"CSV metrics:      {tmp_path / 'csv' / 'metrics.csv'}",
        f"Custom: {tmp_path / 'custom'}",
    ]
