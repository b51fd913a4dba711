"""``lit-llm predict`` output: whatever ``predict_step`` returns, one JSON object a line in the run directory's
``predictions.jsonl``, unless the config names a prediction writer of its own.

Example::
    trainer = Trainer(callbacks=[JsonlPredictionWriter("runs/rt/version_0/predictions.jsonl")])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

__all__ = ["JsonlPredictionWriter", "default_prediction_file"]


class JsonlPredictionWriter(BasePredictionWriter):
    """Writes whatever ``predict_step`` returns (lists of dicts) to a JSONL file, one prediction a line."""

    def __init__(self, output_file: str) -> None:
        super().__init__(write_interval="epoch")
        self.output_file = output_file

    def write_on_epoch_end(
        self, trainer: Trainer, pl_module: LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        import json

        path = Path(self.output_file)
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("x") as f:  # "x": never overwrite an earlier file
            for batch in predictions:
                for item in batch if isinstance(batch, list) else [batch]:
                    f.write(json.dumps(item, default=str) + "\n")
        self.written = path


def default_prediction_file(trainer_cfg: Any, run_dir: Path) -> Path | None:
    """``run_dir/predictions.jsonl`` for a :class:`JsonlPredictionWriter`, or None when the Trainer config's
    callbacks already hold a prediction writer."""
    callbacks = trainer_cfg.get("callbacks") or []
    if any("PredictionWriter" in str(getattr(c, "class_path", "")) for c in callbacks):
        return None
    return run_dir / "predictions.jsonl"
