import numpy as np
import pytest
import torch

from lit_llm.tracking.reports import (
    format_report,
    plot_confusion_matrix,
    report_from_confusion,
    report_from_multilabel,
    save_report,
)


def test_report_matches_sklearn_multiclass():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, 200)
    y_pred = np.where(rng.random(200) < 0.7, y_true, rng.integers(0, 3, 200))
    y_pred[y_pred == 2] = 1  # class 2 never predicted: precision 0/0 -> 0 as sklearn's zero_division=0
    labels = ["neg", "neu", "pos"]
    cm = torch.tensor(sklearn_metrics.confusion_matrix(y_true, y_pred, labels=[0, 1, 2]))
    ours = report_from_confusion(cm, labels)
    ref = sklearn_metrics.classification_report(
        y_true, y_pred, labels=[0, 1, 2], target_names=labels, output_dict=True, zero_division=0
    )
    assert ours["accuracy"] == pytest.approx(ref["accuracy"])
    for key in [*labels, "macro avg", "weighted avg"]:
        for field in ("precision", "recall", "f1-score", "support"):
            assert ours[key][field] == pytest.approx(ref[key][field]), (key, field)


def test_report_matches_sklearn_multilabel():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 2, (50, 3))
    y_pred = np.where(rng.random((50, 3)) < 0.8, y_true, 1 - y_true)
    tp = (y_true & y_pred).sum(0)
    fp = ((1 - y_true) & y_pred).sum(0)
    fn = (y_true & (1 - y_pred)).sum(0)
    tn = ((1 - y_true) & (1 - y_pred)).sum(0)
    stats = torch.tensor(np.stack([tp, fp, tn, fn, tp + fn], 1))
    ours = report_from_multilabel(stats, ["a", "b", "c"])
    ref = sklearn_metrics.classification_report(
        y_true, y_pred, target_names=["a", "b", "c"], output_dict=True, zero_division=0
    )
    for key in ["a", "b", "c", "micro avg", "macro avg", "weighted avg"]:
        for field in ("precision", "recall", "f1-score", "support"):
            assert ours[key][field] == pytest.approx(ref[key][field]), (key, field)


def test_format_and_save(tmp_path):
    report = report_from_confusion(torch.tensor([[3, 1], [0, 4]]), ["neg", "pos"])
    text = format_report(report)
    lines = text.splitlines()
    assert lines[0].split() == ["precision", "recall", "f1-score", "support"]
    assert sum(line.strip().startswith("accuracy") for line in lines) == 1
    assert "0.8750" in text and "weighted avg" in text
    path = save_report(report, tmp_path)
    assert path.read_text() == text and (tmp_path / "classification_report.json").is_file()
    png = plot_confusion_matrix(torch.tensor([[3, 1], [0, 4]]), ["neg", "pos"], tmp_path / "cm.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_confusion_shape_mismatch():
    with pytest.raises(ValueError, match="does not match 3 labels"):
        report_from_confusion(torch.zeros(2, 2), ["a", "b", "c"])
