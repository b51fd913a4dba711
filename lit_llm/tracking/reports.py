"""Classification reports (as scikit-learn's ``classification_report``), regression reports, confusion-matrix
plots, and :func:`log_figure`, which sends a report figure to every logger of a run that takes images.

Computed from counts, so they work on the confusion matrices torchmetrics accumulates across batches and ranks.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "report_from_confusion",
    "report_from_multilabel",
    "format_report",
    "save_report",
    "plot_confusion_matrix",
    "regression_report",
    "format_regression_report",
    "save_regression_report",
    "log_figure",
]

REGRESSION_METRICS = ("mae", "rmse", "pearson", "spearman")


def _prf(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Zero where undefined, as sklearn's zero_division=0.
    precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(tp + fn > 0, tp / (tp + fn).clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0 * tp)
    return precision, recall, f1


def _rows(labels: Sequence[str], tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> dict[str, Any]:
    tp, fp, fn = tp.double(), fp.double(), fn.double()
    support = tp + fn
    p, r, f = _prf(tp, fp, fn)
    report: dict[str, Any] = {}
    for i, name in enumerate(labels):
        report[name] = {
            "precision": p[i].item(),
            "recall": r[i].item(),
            "f1-score": f[i].item(),
            "support": int(support[i].item()),
        }
    total = support.sum()
    weights = support / total.clamp(min=1)
    mp, mr, mf = _prf(tp.sum(), fp.sum(), fn.sum())
    report["micro avg"] = {"precision": mp.item(), "recall": mr.item(), "f1-score": mf.item(), "support": int(total)}
    report["macro avg"] = {
        "precision": p.mean().item(),
        "recall": r.mean().item(),
        "f1-score": f.mean().item(),
        "support": int(total),
    }
    report["weighted avg"] = {
        "precision": (p * weights).sum().item(),
        "recall": (r * weights).sum().item(),
        "f1-score": (f * weights).sum().item(),
        "support": int(total),
    }
    return report


def report_from_confusion(confusion: torch.Tensor, labels: Sequence[str]) -> dict[str, Any]:
    """Per-class precision / recall / F1 / support with accuracy and micro / macro / weighted averages.

    Args:
        confusion: (C, C) counts, rows = true class, columns = predicted class.
        labels: the C class names.

    Example::
        >>> report_from_confusion(torch.tensor([[3, 1], [0, 4]]), ["neg", "pos"])["accuracy"]
        0.875
    """
    confusion = confusion.detach().cpu().double()
    if confusion.shape != (len(labels), len(labels)):
        raise ValueError(f"confusion matrix of shape {tuple(confusion.shape)} does not match {len(labels)} labels")
    tp = confusion.diag()
    fp = confusion.sum(0) - tp
    fn = confusion.sum(1) - tp
    report = _rows(labels, tp, fp, fn)
    # Single-label: micro P = R = F1 = accuracy; sklearn prints it as "accuracy".
    report["accuracy"] = report.pop("micro avg")["f1-score"]
    return {k: report[k] for k in [*labels, "accuracy", "macro avg", "weighted avg"]}


def report_from_multilabel(stats: torch.Tensor, labels: Sequence[str]) -> dict[str, Any]:
    """The multi-label report from per-label (tp, fp, tn, fn, support) stats, as torchmetrics' ``StatScores``.

    Args:
        stats: (C, 5) counts.
        labels: the C label names.
    """
    stats = stats.detach().cpu().double()
    return _rows(labels, stats[:, 0], stats[:, 1], stats[:, 3])


def format_report(report: dict[str, Any], digits: int = 4) -> str:
    """Render a report dict as sklearn's text table."""
    names = [k for k in report if k != "accuracy"]
    width = max(len(n) for n in [*names, "weighted avg"])
    head = f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}"
    lines = [head, ""]
    for name in names:
        if name.endswith(" avg") and not lines[-1].strip().startswith(("micro avg", "macro avg", "accuracy")):
            lines.append("")
            if "accuracy" in report:
                support = report[name]["support"]
                lines.append(f"{'accuracy':>{width}} {'':>9} {'':>9} {report['accuracy']:>9.{digits}f} {support:>9}")
        row = report[name]
        lines.append(
            f"{name:>{width}} {row['precision']:>9.{digits}f} {row['recall']:>9.{digits}f} "
            f"{row['f1-score']:>9.{digits}f} {row['support']:>9}"
        )
    return "\n".join(lines) + "\n"


def save_report(report: dict[str, Any], out_dir: str | Path, stem: str = "classification_report") -> Path:
    """Write ``<stem>.json`` and ``<stem>.txt`` into ``out_dir``; returns the text file's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    text_path = out / f"{stem}.txt"
    text_path.write_text(format_report(report))
    return text_path


def plot_confusion_matrix(confusion: torch.Tensor, labels: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Save a confusion-matrix heat map with counts (rows: true, columns: predicted) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = confusion.detach().cpu().numpy()
    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * n + 2, 1.2 + 0.6 * n + 1.5))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), labels=list(labels), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(labels))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(
                j, i, f"{int(cm[i, j])}", ha="center", va="center", color="white" if cm[i, j] > threshold else "black"
            )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def regression_report(metrics: Mapping[str, Any], target: str) -> dict[str, Any]:
    """The test report of a regression model: MAE, RMSE, Pearson and Spearman correlation of one target.

    Args:
        metrics: the computed values by name (``mae``, ``rmse``, ``pearson``, ``spearman``), tensors or floats.
        target: the target's name (the label column), shown in the report.

    Raises:
        KeyError: one of the four metrics is missing.

    Example::
        >>> regression_report({"mae": 0.5, "rmse": 0.75, "pearson": 0.9, "spearman": 0.8}, "score")["rmse"]
        0.75
    """
    missing = [m for m in REGRESSION_METRICS if m not in metrics]
    if missing:
        raise KeyError(f"regression_report: missing {missing}; give {', '.join(REGRESSION_METRICS)}")
    return {"target": target, **{m: float(metrics[m]) for m in REGRESSION_METRICS}}


def format_regression_report(report: Mapping[str, Any], digits: int = 4) -> str:
    """Render a :func:`regression_report` as a two-column text table."""
    lines = [f"target: {report['target']}", ""]
    lines += [f"{name:>9} {report[name]:>9.{digits}f}" for name in REGRESSION_METRICS]
    return "\n".join(lines) + "\n"


def save_regression_report(report: Mapping[str, Any], out_dir: str | Path, stem: str = "regression_report") -> Path:
    """Write ``<stem>.json`` and ``<stem>.txt`` into ``out_dir``; returns the text file's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(dict(report), indent=2) + "\n")
    text_path = out / f"{stem}.txt"
    text_path.write_text(format_regression_report(report))
    return text_path


def log_figure(loggers: Iterable[Any], key: str, png: str | Path, step: int = 0) -> list[str]:
    """Log a saved PNG figure as an image to every logger that takes images; returns the loggers' class names.

    Lightning's ``TensorBoardLogger`` gets it through ``SummaryWriter.add_image`` (HWC, uint8); a logger with a
    ``log_image(key, images, step)`` method (``WandbLogger``) through that method. Loggers that cannot hold images
    (``CSVLogger``) are skipped: the PNG file stays the record. Call it on rank zero only.

    Args:
        loggers: ``trainer.loggers``.
        key: the image's name, e.g. ``test/confusion_matrix``.
        png: the figure file.
        step: the global step to log it at.

    Example::
        log_figure(trainer.loggers, "test/confusion_matrix", "runs/rt/version_0/reports/confusion_matrix.png")
    """
    from lightning.pytorch.loggers import TensorBoardLogger

    logged: list[str] = []
    image = None
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            if image is None:
                import numpy as np
                from PIL import Image

                with Image.open(png) as opened:
                    image = np.asarray(opened.convert("RGB"))  # (H, W, 3) uint8
            logger.experiment.add_image(key, image, global_step=step, dataformats="HWC")
            logger.experiment.flush()
        elif callable(getattr(logger, "log_image", None)):
            logger.log_image(key=key, images=[str(png)], step=step)
        else:
            continue
        logged.append(type(logger).__name__)
    return logged
