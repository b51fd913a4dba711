"""ExactResume acts only on our ResumableDataLoader: a user's own stateful loader (torchdata's StatefulDataLoader),
which Lightning restores in its own format, is left alone and resumes exactly."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lit_llm.callbacks import ExactResume

stateful_dataloader = pytest.importorskip("torchdata.stateful_dataloader")


class _UserModule(pl.LightningModule):
    """A user's module whose train loader is torchdata's StatefulDataLoader (shuffled, with dropout)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 1))

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.net(batch).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def train_dataloader(self):
        data = torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
        return stateful_dataloader.StatefulDataLoader(data, batch_size=4, shuffle=True)


class _Batches(Callback):
    """The batches the module trained on, in order."""

    def __init__(self) -> None:
        self.seen: list[list[float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append(batch[:, 0].tolist())


def _trainer(tmp_path, max_steps, callbacks):
    return pl.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path, callbacks=callbacks)


@pytest.mark.parametrize("stop_at", [13, 20])  # mid-epoch (10 batches an epoch), and the end of an epoch
def test_a_users_stateful_dataloader_resumes_exactly(tmp_path, stop_at):
    pl.seed_everything(0)
    reference, full = _UserModule(), _Batches()
    _trainer(tmp_path / "ref", 25, [ExactResume(), full]).fit(reference)

    pl.seed_everything(0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True, save_top_k=0)
    _trainer(tmp_path / "a", stop_at, [ExactResume(), ckpt]).fit(_UserModule())
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    loader_state = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert "epoch" not in loader_state or "batches" not in loader_state  # torchdata's own format, not ours

    pl.seed_everything(123)  # the resumed process starts from other random states
    resumed, rest = _UserModule(), _Batches()
    _trainer(tmp_path / "b", 25, [ExactResume(), rest]).fit(resumed, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert rest.seen == full.seen[stop_at:]  # the same batches after the resume as in the uninterrupted run
    for p, q in zip(reference.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)
