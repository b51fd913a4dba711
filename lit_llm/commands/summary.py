"""What ``lit-llm`` prints at the end of a subcommand: where the run directory, the checkpoints, the exported
model, the reports, the predictions, the compression artifacts and each logger's records are.

Example::
    print_summary(run_dir, trainer, model)
    # run directory:    runs/rt/version_0
    # best checkpoint:  runs/rt/version_0/checkpoints/epoch=2-step=300.ckpt (val/accuracy=0.8120)
    # ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_only

from lit_llm.callbacks.stage_times import StageTimes
from lit_llm.commands.loggers import logger_locations

__all__ = ["print_summary", "summary_lines"]


def summary_lines(run_dir: Path, trainer: Trainer, model: Any) -> list[str]:
    """The end-of-run lines, in order: run directory, checkpoints, the model's outputs, the callbacks' outputs,
    the loggers' locations, where the wall time went."""
    return [
        f"run directory:    {run_dir}",
        *_checkpoint_lines(trainer.checkpoint_callback),
        *_model_output_lines(model),
        *_callback_output_lines(trainer.callbacks),  # type: ignore[attr-defined]
        *logger_locations(trainer.loggers),
        *_time_lines(trainer.callbacks),  # type: ignore[attr-defined]
    ]


@rank_zero_only
def print_summary(run_dir: Path, trainer: Trainer, model: Any) -> None:
    """Print :func:`summary_lines` after a blank line (on rank 0 only)."""
    print("\n" + "\n".join(summary_lines(run_dir, trainer, model)), flush=True)


def _checkpoint_lines(checkpoint: Any) -> list[str]:
    """The best checkpoint (with its monitored score) and the last one, where the checkpoint callback wrote them."""
    lines = []
    best = getattr(checkpoint, "best_model_path", "") if checkpoint is not None else ""
    if best:
        score = getattr(checkpoint, "best_model_score", None)
        lines.append(
            f"best checkpoint:  {best}"
            + (f" ({getattr(checkpoint, 'monitor', None)}={float(score):.4f})" if score is not None else "")
        )
    last = getattr(checkpoint, "last_model_path", "") if checkpoint is not None else ""
    if last:
        lines.append(f"last checkpoint:  {last}")
    return lines


def _model_output_lines(model: Any) -> list[str]:
    """Our modules' exported model directory and report, when they wrote them."""
    lines = []
    for attr, label in (("export_path", "exported model:   "), ("report_path", "report:           ")):
        value = getattr(model, attr, None)
        if value:
            lines.append(f"{label}{value}")
    return lines


def _callback_output_lines(callbacks: list[Any]) -> list[str]:
    """What callbacks wrote: predictions (``written``), reports, and compression artifacts for serving."""
    lines = []
    for cb in callbacks:
        written = getattr(cb, "written", None)
        if written:
            lines.append(f"predictions:      {written}")
        report = getattr(cb, "report_path", None)
        if report:
            lines.append(f"{type(cb).__name__} report: {report}")
        artifact = getattr(cb, "artifact_path", None)  # what a compression callback wrote for serving
        if artifact:
            lines.append(f"{type(cb).__name__} artifact: {artifact}")
    return lines


def _time_lines(callbacks: list[Any]) -> list[str]:
    """The run's wall time by stage (start-up, data, model setup, training loop, validation, fit end, test)."""
    times = next((cb for cb in callbacks if isinstance(cb, StageTimes)), None)
    return [f"time:             {times.summary()}"] if times is not None and times.seconds else []
