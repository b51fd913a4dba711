"""A callback that kills its own process with SIGKILL, for the crash-and-resume tests (named by class_path)."""

from __future__ import annotations

import os
import signal

from lightning.pytorch.callbacks import Callback


class KillAtStep(Callback):
    """SIGKILL this process when a batch starts at optimizer step ``step`` after ``micro_batches`` micro-batches
    of that step (so with gradient accumulation it dies in the middle of an accumulation cycle)."""

    def __init__(self, step: int, micro_batches: int = 1) -> None:
        self.step, self.micro_batches, self._seen = step, micro_batches, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            if self._seen == self.micro_batches:
                os.kill(os.getpid(), signal.SIGKILL)
            self._seen += 1
