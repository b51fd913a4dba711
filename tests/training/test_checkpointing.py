import os
import signal
import subprocess
import sys
import time

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from lit_llm.callbacks import NonFiniteLossError, StopOnNonFiniteLoss
from lit_llm.training.checkpointing import AtomicCheckpointIO, atomic_torch_save


def test_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1, "w": torch.ones(3)}, path)

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # as if the process were stopped mid-write

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


_WRITER = """
import sys, torch
from lit_llm.training.checkpointing import atomic_torch_save
big = torch.randn(8_000_000)  # 32 MB: each save takes long enough to be killed in the middle
step = 0
while True:
    step += 1
    atomic_torch_save({"step": step, "w": big}, sys.argv[1])
    print(step, flush=True)
"""


@pytest.mark.slow
def test_sigkill_during_saves_never_leaves_a_truncated_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "1"  # one save completed
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["step"] >= 1 and checkpoint["w"].numel() == 8_000_000


class _Diverging(pl.LightningModule):
    """Its loss turns NaN at optimizer step 3."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch).pow(2).mean()
        return loss * float("nan") if self.global_step == 3 else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(torch.randn(32, 4), batch_size=4)


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_last=True)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=10,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[StopOnNonFiniteLoss(), ckpt],
        plugins=[AtomicCheckpointIO()],
        default_root_dir=tmp_path,
    )
    module = _Diverging()
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss \(nan\) at optimizer step 3 "):
        trainer.fit(module)
    assert all(torch.isfinite(p).all() for p in module.parameters())  # the NaN step was never applied
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert last["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_remote_urls_go_through_fsspec_and_load_weights_only(tmp_path, monkeypatch):
    import fsspec

    from hostile_checkpoints import Payload
    from lit_llm.training.checkpointing import CheckpointError, load_checkpoint_file

    monkeypatch.chdir(tmp_path)  # a remote URL taken for a local path would show up here as memory:/...
    io_plugin = AtomicCheckpointIO()
    url = "memory://bucket/run/checkpoints/last.ckpt"
    checkpoint = {"state_dict": {"w": torch.randn(3, 2)}, "global_step": 7, "hyper_parameters": {"lr": 0.1}}
    io_plugin.save_checkpoint(checkpoint, url)
    memory = fsspec.filesystem("memory")
    assert memory.exists(url) and list(tmp_path.iterdir()) == []
    loaded = io_plugin.load_checkpoint(url)
    assert loaded["global_step"] == 7 and loaded["hyper_parameters"] == {"lr": 0.1}
    assert torch.equal(loaded["state_dict"]["w"], checkpoint["state_dict"]["w"])
    io_plugin.remove_checkpoint(url)
    assert not memory.exists(url)
    with pytest.raises(FileNotFoundError, match="memory://bucket/run/checkpoints/last.ckpt' does not exist"):
        load_checkpoint_file(url)

    # A remote file gets the same weights-only refusal as a local one.
    marker = tmp_path / "ran"
    hostile = "memory://bucket/run/hostile.ckpt"
    io_plugin.save_checkpoint({"state_dict": {}, "x": Payload("exec", marker)}, hostile)
    with pytest.raises(CheckpointError, match=r"memory://bucket/run/hostile.ckpt is not a readable checkpoint \(it "):
        io_plugin.load_checkpoint(hostile)
    assert not marker.exists()


def test_file_urls_are_local_and_atomic(tmp_path):
    io_plugin = AtomicCheckpointIO()
    io_plugin.save_checkpoint({"state_dict": {"w": torch.ones(2)}}, f"file://{tmp_path}/a.ckpt")
    assert [p.name for p in tmp_path.iterdir()] == ["a.ckpt"]
    assert torch.equal(io_plugin.load_checkpoint(f"file://{tmp_path}/a.ckpt")["state_dict"]["w"], torch.ones(2))


def test_a_sharded_best_checkpoint_is_not_restored_silently(tmp_path):
    from lit_llm.modules.best_checkpoint import restore_best_checkpoint

    module, checkpoint = _Diverging(), ModelCheckpoint(dirpath=tmp_path)
    module.trainer = pl.Trainer(accelerator="cpu", logger=False, callbacks=[checkpoint], enable_progress_bar=False)
    (tmp_path / "best.ckpt").mkdir()  # what TransformerFSDP2 writes: a directory of shards
    checkpoint.best_model_path = str(tmp_path / "best.ckpt")
    with pytest.warns(UserWarning, match=r"best.ckpt is sharded; the model keeps its last weights. Export the best"):
        assert restore_best_checkpoint(module) is None
