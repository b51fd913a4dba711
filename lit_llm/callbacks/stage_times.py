"""``StageTimes``: where a run's wall time goes, stage by stage, on any LightningModule."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.data import extract_batch_size
from typing_extensions import override

__all__ = ["StageTimes", "process_start_time"]

# Stages in the order a fit (then a test) goes through them, with the words the summary prints.
STAGES = {
    "startup": "start-up",
    "data": "data setup",
    "model_setup": "model setup",
    "training": "training loop",
    "validation": "validation",
    "fit_end": "fit end",
    "test": "test",
    "predict": "predict",
}


def process_start_time() -> float | None:
    """When this process started (``time.time()`` scale): psutil where installed, else Linux's ``/proc``; None
    where neither answers."""
    try:
        import psutil

        return float(psutil.Process().create_time())
    except ImportError:
        pass
    try:  # field 22 of /proc/self/stat: start time in clock ticks after boot (btime in /proc/stat)
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        stat = Path("/proc/stat").read_text().splitlines()
        boot = next(int(line.split()[1]) for line in stat if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


class StageTimes(Callback):
    """Itemize a run's wall time: start-up, data setup, model setup, training loop, validation, fit end, test.

    Lightning's own :class:`~lightning.pytorch.callbacks.Timer` gives one time per trainer stage; this callback
    splits what lies outside the training loop, so a user sees where time goes besides the steps:

    - ``startup``: process start (or the ``since`` given) to :meth:`mark_start` (imports, config, building the
      model), when it was called (``lit-llm`` calls it just before ``trainer.fit``);
    - ``data``: :meth:`mark_start` (else process start) to the trainer's setup: ``prepare_data`` and the
      datamodule's ``setup`` (reading and tokenizing the data);
    - ``model_setup``: the module's ``setup``, the optimizer and the sanity check, up to the first training batch;
    - ``training``: the training loop, validation excluded;
    - ``validation``: every validation run during fit;
    - ``fit_end``: after the last step to the end of ``fit``: the modules' fit end (the best weights restored and
      exported) and the checkpoint callbacks' last saves;
    - ``test`` / ``predict``: from the end of the previous stage (or :meth:`mark_start`) to that stage's teardown,
      so the datamodule's setup for it counts.

    Wall-clock seconds of this process (rank 0 prints them under ``lit-llm``), in :attr:`seconds`. The training
    loop's batches and samples (this process's, counted as Lightning counts a batch's size) are in
    :attr:`train_batches` and :attr:`train_samples`, and the summary gives its samples per second: the figure to
    set beside a plain loop's.

    Example::
        times = StageTimes()
        trainer = Trainer(callbacks=[times])
        trainer.fit(model, datamodule)
        times.seconds   # {"data": 3.1, "model_setup": 0.4, "training": 95.0, "validation": 8.2, "fit_end": 1.9}
        times.summary()  # "..., training loop 95.0 s (300 batches, 9,600 samples, 101.1 samples/s), ..."
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.train_batches = 0
        self.train_samples: int | None = 0  # None once a batch's size could not be read
        self._start: float | None = None
        self._since: float | None = None  # where the next test / predict stage starts counting
        self._marks: dict[str, float] = {}

    def mark_start(self, since: float | None = None) -> None:
        """Call just before ``trainer.fit`` / ``test``: what came before counts as start-up, what follows as data.

        Start-up counts from ``since`` (``time.time()`` scale) when given, else from process start: a run that is
        not the process's first (a ``lit-llm tune`` trial, a benchmark's second fit) passes its own beginning.
        """
        self._start = self._since = time.time()
        started = process_start_time() if since is None else since
        if started is not None:
            self.seconds["startup"] = max(0.0, self._start - started)

    def _add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + max(0.0, seconds)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        now = time.time()
        # The datamodule's setup ran just before this hook: a test / predict stage counts from its start.
        self._marks[f"setup_{stage}"] = self._since if self._since is not None and stage != "fit" else now
        if stage == "fit":
            begin = self._start if self._start is not None else process_start_time()
            if begin is not None:
                self._add("data", now - begin)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = time.time()
        self._marks["train_start"] = now
        self._add("model_setup", now - self._marks.get("setup_fit", now))

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.train_batches += 1
        if self.train_samples is not None:
            try:
                with warnings.catch_warnings():  # Lightning's guess at an ambiguous batch: counted, not warned about
                    warnings.simplefilter("ignore")
                    self.train_samples += extract_batch_size(batch)
            except Exception:  # noqa: BLE001 - a user's batch of a shape Lightning cannot size: no sample count
                self.train_samples = None

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._marks["validation_start"] = time.time()

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Only validation inside the training loop; the sanity check counts as model setup.
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._add("validation", time.time() - self._marks.pop("validation_start", time.time()))

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = time.time()
        self._marks["train_end"] = now
        loop = now - self._marks.get("train_start", now)
        self._add("training", loop - self.seconds.get("validation", 0.0))

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        now = time.time()
        self._since = now
        if stage == "fit" and "train_end" in self._marks:
            self._add("fit_end", now - self._marks.pop("train_end"))
        elif stage in ("test", "predict") and f"setup_{stage}" in self._marks:
            self._add(stage, now - self._marks.pop(f"setup_{stage}"))

    def summary(self) -> str:
        """One line: each stage's seconds in run order, and their total."""
        parts = [f"{STAGES[name]} {self.seconds[name]:.1f} s{self._loop_rate() if name == 'training' else ''}"
                 for name in STAGES if name in self.seconds]
        return ", ".join(parts) + f" (total {sum(self.seconds.values()):.1f} s)"

    def _loop_rate(self) -> str:
        """`` (300 batches, 9,600 samples, 101.1 samples/s)`` for the training loop, or nothing without batches."""
        if not self.train_batches:
            return ""
        seconds = self.seconds.get("training", 0.0)
        if self.train_samples is None or seconds <= 0:
            return f" ({self.train_batches:,} batches)"
        rate = self.train_samples / seconds
        return f" ({self.train_batches:,} batches, {self.train_samples:,} samples, {rate:.1f} samples/s)"
