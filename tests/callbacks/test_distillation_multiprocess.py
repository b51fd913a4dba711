"""The drop-in DistillationTeacher under DDP (2 CPU processes, ddp_fork): same result as one process."""

from __future__ import annotations

import json

import pytest
import torch
from test_multiprocess import Dump, Student, _trainer, teacher_dir  # noqa: F401 - teacher_dir is a fixture

from lit_llm.callbacks import DistillationTeacher


class PlainStudent(Student):
    """A user's module with an unchanged training_step: it returns the HF loss."""

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.model(**batch).loss


@pytest.mark.slow
def test_drop_in_distillation_with_a_projection_on_two_processes_equals_one(tmp_path, teacher_dir):  # noqa: F811
    # The instance-level training_step wrapper is reached through DDP's forward redirection, and the hidden-state
    # projection (width 8 -> 16, outside the DDP module) gets its gradients averaged over the ranks.
    def callback() -> DistillationTeacher:
        return DistillationTeacher(str(teacher_dir), temperature=2.0, alpha=0.5, hidden_layers={0: 1})

    single_cb = callback()
    single = PlainStudent(micro_batch=8)
    _trainer(devices=1, callbacks=[single_cb], limit_val_batches=0).fit(single)
    _trainer(
        devices=2, strategy="ddp_fork", limit_val_batches=0, use_distributed_sampler=False,
        callbacks=[callback(), Dump(tmp_path)],
    ).fit(PlainStudent(micro_batch=4))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["state"] == ranks[1]["state"]
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(torch.tensor(ranks[0]["state"][name]), value, rtol=1e-5, atol=1e-6)
    assert set(single_cb.projections) == {"0"}
    plain = PlainStudent(micro_batch=8)
    _trainer(devices=1, limit_val_batches=0).fit(plain)
    assert not torch.allclose(plain.model.classifier.weight, single.model.classifier.weight)
