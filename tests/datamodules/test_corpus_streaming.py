"""Streaming corpora: split by rank at the source, shuffled per epoch from the seed, resumed mid-epoch exactly."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import datasets
import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_llm.callbacks import ExactResume
from lit_llm.datamodules.corpus import StreamingBlocks, TextCorpusDataModule, stream_documents
from lit_llm.datamodules.packing import collate_blocks
from lit_llm.datamodules.resumable import ResumableStreamLoader

DOCS = [f"the movie {i} was good and the story of john in paris was great . {'music ' * (i % 5)}the end"
        for i in range(48)]


def _files(tmp_path: Path, n_files: int) -> list[str]:
    paths = []
    for f in range(n_files):
        path = tmp_path / f"part{f}.jsonl"
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS[f::n_files]))
        paths.append(str(path))
    return paths


def _raw(files: list[str]) -> datasets.IterableDataset:
    return datasets.load_dataset("json", data_files=files, split="train", streaming=True).select_columns(["text"])


@pytest.mark.parametrize("n_files", [1, 4])  # 4 files: sharded at the source; 1 file: every rank skips the others'
def test_two_ranks_read_disjoint_documents_whose_union_is_the_corpus(tmp_path, n_files):
    raw = _raw(_files(tmp_path, n_files))
    per_rank = [[row["text"] for row in stream_documents(raw, "text", rank=r, world_size=2, seed=0)] for r in (0, 1)]
    assert per_rank[0] and per_rank[1]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(DOCS)
    assert raw.num_shards == n_files


def test_the_validation_split_is_fixed_by_content_and_disjoint_from_training(tmp_path):
    raw = _raw(_files(tmp_path, 4))
    train = [row["text"] for row in stream_documents(raw, "text", val_every=4, seed=0)]
    val = [row["text"] for row in stream_documents(raw, "text", val_every=4, val=True)]
    assert 0 < len(val) < len(train) and not set(train) & set(val) and sorted(train + val) == sorted(DOCS)
    shuffled = stream_documents(raw, "text", val_every=4, seed=1)
    shuffled.set_epoch(3)
    assert sorted(row["text"] for row in shuffled) == sorted(train)  # another order, the same documents


def _loader(files: list[str], tokenizer, seed: int = 0, **kwargs) -> ResumableStreamLoader:
    docs = stream_documents(_raw(files), "text", seed=seed, shuffle_buffer=8)
    blocks = StreamingBlocks(docs, "text", tokenizer, 16, packing=True)
    return ResumableStreamLoader(blocks, batch_size=2, collate_fn=partial(collate_blocks, pad_token_id=0), **kwargs)


def _epoch(loader: ResumableStreamLoader, epoch: int) -> list[list[list[int]]]:
    loader.sampler.set_epoch(epoch)  # what Lightning's fit loop does at each epoch start
    return [batch["input_ids"].tolist() for batch in loader]


def test_order_differs_between_epochs_and_is_reproducible_from_the_seed(tmp_path, tiny_tokenizer):
    files = _files(tmp_path, 4)
    a, b = _loader(files, tiny_tokenizer), _loader(files, tiny_tokenizer)
    assert _epoch(a, 0) == _epoch(b, 0)
    assert _epoch(a, 2) == _epoch(b, 2)  # b never ran epoch 1
    assert _epoch(a, 1) != _epoch(a, 0)
    assert _epoch(_loader(files, tiny_tokenizer, seed=5), 0) != _epoch(a, 0)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_stop_and_resume_mid_epoch_continues_where_it_stopped(tmp_path, tiny_tokenizer, num_workers):
    files = _files(tmp_path, 4)
    full = _epoch(_loader(files, tiny_tokenizer, num_workers=num_workers), 1)
    first = _loader(files, tiny_tokenizer, num_workers=num_workers)
    first.sampler.set_epoch(1)
    iterator = iter(first)
    seen = [next(iterator)["input_ids"].tolist() for _ in range(3)]
    del iterator
    resumed = _loader(files, tiny_tokenizer, num_workers=num_workers)
    resumed.load_state_dict({"epoch": 1, "batches": 3})  # what ExactResume gives it from the checkpoint
    assert seen + _epoch(resumed, 1) == full
    assert _epoch(resumed, 2) == _epoch(_loader(files, tiny_tokenizer, num_workers=num_workers), 2)  # skip: once


def test_the_datamodule_streams_shuffled_resumable_batches(tmp_path, tiny_tokenizer_dir):
    dm = TextCorpusDataModule(data_files=_files(tmp_path, 4), tokenizer=str(tiny_tokenizer_dir), block_size=16,
                              batch_size=4, streaming=True, shuffle_buffer=16, cache_dir=str(tmp_path / "cache"))
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, ResumableStreamLoader)
    epochs = [_epoch(loader, e) for e in (0, 1)]
    assert epochs[0] != epochs[1]
    assert all(len(block) == 16 for batch in epochs[0] for block in batch)
    unshuffled = TextCorpusDataModule(data_files=_files(tmp_path, 4), tokenizer=str(tiny_tokenizer_dir), block_size=16,
                                      batch_size=4, streaming=True, shuffle_buffer=0, cache_dir=str(tmp_path / "cache"))
    unshuffled.setup("fit")
    assert _epoch(unshuffled.train_dataloader(), 0) == _epoch(unshuffled.train_dataloader(), 1) != epochs[0]
    assert dm.val_dataloader() is not None


class _Recorder(pl.LightningModule):
    """Trains one weight and records every batch it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[tuple[list[list[int]], float]] = []

    def training_step(self, batch, batch_idx):
        # A draw from the global RNG, as dropout or random masking make: a resume must not shift it.
        self.seen.append((batch["input_ids"].tolist(), torch.rand(()).item()))
        return (self.weight - batch["input_ids"].float().mean()).pow(2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize("stop_at", [20, 18])  # mid-epoch 1, and the end of epoch 0 (18 batches)
def test_a_resumed_streaming_fit_gets_the_batches_of_the_uninterrupted_run(tmp_path, tiny_tokenizer_dir, stop_at):
    files = _files(tmp_path, 4)

    def run(max_steps: int, callbacks: list, ckpt_path=None) -> _Recorder:
        dm = TextCorpusDataModule(data_files=files, tokenizer=str(tiny_tokenizer_dir), block_size=16, batch_size=4,
                                  streaming=True, shuffle_buffer=16, val_fraction=0.0, cache_dir=str(tmp_path / "c"))
        module = _Recorder()
        pl.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, default_root_dir=tmp_path, callbacks=callbacks
                   ).fit(module, datamodule=dm, ckpt_path=ckpt_path)
        return module

    pl.seed_everything(0)
    full = run(24, [ExactResume()])  # 24 steps: more than one epoch of 4-block batches
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True, save_top_k=0)
    pl.seed_everything(0)
    run(stop_at, [ExactResume(), ckpt])
    pl.seed_everything(123)  # the resumed process starts from other random states
    resumed = run(24, [ExactResume()], ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert len(full.seen) == 24 and resumed.seen == full.seen[stop_at:]
    assert torch.equal(full.weight, resumed.weight)


def test_bad_streaming_arguments(tmp_path, tiny_tokenizer_dir):
    with pytest.raises(ValueError, match=r"shuffle_buffer=-1 must be >= 0 \(0 turns the streaming shuffle off\)"):
        TextCorpusDataModule(data_files="x.txt", tokenizer=str(tiny_tokenizer_dir), streaming=True, shuffle_buffer=-1)
    with pytest.raises(TypeError, match=r"ResumableStreamLoader needs an IterableDataset with set_epoch\(epoch\), got "
                                        r"list; for a map-style dataset use ResumableDataLoader"):
        ResumableStreamLoader([1, 2, 3])
