"""ResumableDataLoader: a reproducible order per epoch, and a position that survives save / load."""

from __future__ import annotations

import functools
import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, IterableDataset

from lit_llm.callbacks import ExactResume
from lit_llm.callbacks.resume import get_rng_states, set_rng_states
from lit_llm.datamodules import ResumableDataLoader, ResumableSampler


def _epoch(loader: ResumableDataLoader, epoch: int) -> list[list[int]]:
    loader.sampler.set_epoch(epoch)
    return [batch.tolist() for batch in loader]


def test_each_epochs_order_depends_only_on_seed_and_epoch():
    data = list(range(20))
    a, b = ResumableDataLoader(data, batch_size=4, shuffle=True, seed=3), ResumableDataLoader(data, batch_size=4,
                                                                                            shuffle=True, seed=3)
    assert _epoch(a, 0) == _epoch(b, 0)
    assert _epoch(a, 2) == _epoch(b, 2)  # b never saw epoch 1
    assert _epoch(a, 1) != _epoch(a, 0)
    assert sorted(sum(_epoch(a, 1), [])) == data
    plain = ResumableDataLoader(data, batch_size=4)
    assert sum(_epoch(plain, 5), []) == data  # shuffle=False keeps the order


def test_a_resumed_loader_yields_exactly_the_rest_of_the_epoch_and_stays_aligned_on_a_second_resume():
    data = list(range(23))
    reference = ResumableDataLoader(data, batch_size=4, shuffle=True, seed=1)
    full = _epoch(reference, 1)

    first = ResumableDataLoader(data, batch_size=4, shuffle=True, seed=1)
    first.sampler.set_epoch(1)
    iterator = iter(first)
    seen = [next(iterator).tolist() for _ in range(2)]
    state = first.state_dict()
    assert state == {"epoch": 1, "batches": 2}

    second = ResumableDataLoader(data, batch_size=4, shuffle=True, seed=1)
    second.load_state_dict(state)
    second.sampler.set_epoch(1)
    iterator = iter(second)
    seen.append(next(iterator).tolist())
    assert second.state_dict() == {"epoch": 1, "batches": 3}  # counts from the start of the epoch

    third = ResumableDataLoader(data, batch_size=4, shuffle=True, seed=1)
    third.load_state_dict(second.state_dict())
    seen += _epoch(third, 1)
    assert seen == full
    assert _epoch(third, 2) == _epoch(reference, 2)  # the skip applied once, to its own epoch only


def test_a_position_saved_in_another_epoch_is_ignored():
    loader = ResumableDataLoader(list(range(12)), batch_size=4, shuffle=True, seed=0)
    loader.load_state_dict({"epoch": 0, "batches": 3})  # saved at the end of epoch 0
    assert len(_epoch(loader, 1)) == 3


def test_streams_and_own_samplers_are_refused():
    class Stream(IterableDataset):
        def __iter__(self):
            yield from range(3)

    with pytest.raises(TypeError, match="ResumableDataLoader needs a map-style dataset, got the iterable Stream"):
        ResumableDataLoader(Stream(), batch_size=2)
    with pytest.raises(TypeError, match="makes its own sampler; do not pass sampler="):
        ResumableDataLoader(list(range(4)), sampler=[0, 1, 2, 3])


def test_creating_an_iterator_does_not_draw_from_the_global_rng():
    loader = ResumableDataLoader(list(range(8)), batch_size=2, shuffle=True, seed=0)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    list(loader)
    assert torch.equal(torch.get_rng_state(), before)


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    states = get_rng_states()
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.save({"rng": states}, tmp_path / "rng.pt")
    set_rng_states(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert (torch.equal(torch.rand(3), expected[0]), random.random(), np.random.rand()) == (True, *expected[1:])


class _Noisy(pl.LightningModule):
    """Dropout makes each step depend on the global RNG."""

    def __init__(self, loader_cls=ResumableDataLoader):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 1))
        self.loader_cls = loader_cls

    def training_step(self, batch, batch_idx):
        return self.net(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def train_dataloader(self):
        data = torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
        if self.loader_cls is DataLoader:
            return DataLoader(data, batch_size=4, shuffle=True)
        return self.loader_cls(data, batch_size=4, shuffle=True, seed=7)


def _trainer(tmp_path, max_steps, callbacks=()):
    return pl.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path, callbacks=list(callbacks))


@pytest.mark.parametrize("grouped", [False, True], ids=["shuffled", "length_grouped"])
@pytest.mark.parametrize("stop_at", [13, 20])  # mid-epoch, and the last batch of an epoch
def test_stop_and_resume_in_process_equals_one_run(tmp_path, stop_at, grouped):
    loader = functools.partial(ResumableDataLoader, lengths=_lengths(40)) if grouped else ResumableDataLoader
    pl.seed_everything(0)
    reference = _Noisy(loader)
    _trainer(tmp_path / "ref", 25, [ExactResume()]).fit(reference)

    pl.seed_everything(0)
    first = _Noisy(loader)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True, save_top_k=0)
    _trainer(tmp_path / "a", stop_at, [ExactResume(), ckpt]).fit(first)
    pl.seed_everything(123)  # the resumed process starts from other random states
    resumed = _Noisy(loader)
    _trainer(tmp_path / "b", 25, [ExactResume()]).fit(resumed, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    for p, q in zip(reference.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_plain_loader_gets_a_warning_on_a_mid_epoch_resume(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True, save_top_k=0)
    _trainer(tmp_path / "a", 3, [ExactResume(), ckpt]).fit(_Noisy(DataLoader))
    with pytest.warns(UserWarning, match=r"ExactResume: the train loader \(DataLoader\) has no state_dict"):
        _trainer(tmp_path / "b", 5, [ExactResume()]).fit(_Noisy(DataLoader), ckpt_path=tmp_path / "ckpt" / "last.ckpt")


def _lengths(n: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 200, (n,), generator=g).tolist()


def test_length_grouped_batches_pad_little_see_every_example_once_and_follow_seed_and_epoch():
    lengths = _lengths(1000)
    data = list(range(1000))

    def padding(batches: list[list[int]]) -> int:
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    grouped = ResumableDataLoader(data, batch_size=8, shuffle=True, seed=5, lengths=lengths)
    plain = ResumableDataLoader(data, batch_size=8, shuffle=True, seed=5)
    epoch0 = _epoch(grouped, 0)
    assert sorted(sum(epoch0, [])) == data  # every example once, none twice
    assert padding(epoch0) < padding(_epoch(plain, 0)) / 10
    again = ResumableDataLoader(data, batch_size=8, shuffle=True, seed=5, lengths=lengths)
    assert _epoch(again, 1) == _epoch(grouped, 1) != epoch0
    # Shuffled across the epoch, not sorted from the longest to the shortest batch.
    maxima = [max(lengths[i] for i in b) for b in epoch0]
    assert maxima != sorted(maxima, reverse=True) and maxima != sorted(maxima)


def test_length_grouped_order_shards_across_replicas_into_grouped_batches_and_resumes_exactly():
    lengths = _lengths(403, seed=1)
    shards = []
    for rank in (0, 1):
        sampler = ResumableSampler(range(403), shuffle=True, seed=2, lengths=lengths, batch_size=4)
        sampler.num_replicas, sampler.rank = 2, rank
        sampler.num_samples = math.ceil(403 / 2)
        sampler.total_size = sampler.num_samples * 2
        sampler.set_epoch(3)
        shards.append(list(sampler))
    assert len(shards[0]) == len(shards[1]) == 202
    assert set(shards[0]) | set(shards[1]) == set(range(403))  # one example padded in, as DistributedSampler
    # The two ranks' k-th batches come from one global batch of similar lengths.
    for k in range(0, 200, 4):
        spread = [lengths[i] for shard in shards for i in shard[k : k + 4]]
        assert max(spread) - min(spread) <= 20

    reference = ResumableDataLoader(list(range(403)), batch_size=4, shuffle=True, seed=2, lengths=lengths)
    full = _epoch(reference, 1)
    first = ResumableDataLoader(list(range(403)), batch_size=4, shuffle=True, seed=2, lengths=lengths)
    first.sampler.set_epoch(1)
    iterator = iter(first)
    seen = [next(iterator).tolist() for _ in range(7)]
    resumed = ResumableDataLoader(list(range(403)), batch_size=4, shuffle=True, seed=2, lengths=lengths)
    resumed.load_state_dict(first.state_dict())
    assert seen + _epoch(resumed, 1) == full


def test_lengths_that_do_not_match_the_dataset_are_refused():
    with pytest.raises(ValueError, match="lengths has 3 entries for a dataset of 4 examples"):
        ResumableDataLoader([0, 1, 2, 3], batch_size=2, shuffle=True, lengths=[1, 2, 3])


def test_length_groups_are_mega_batches_of_50_batches_as_the_hf_trainers():
    """Each batch holds neighbours in length within one mega-batch: 50 batches' worth of the epoch's permutation,
    sorted longest first (transformers' LengthGroupedSampler uses the same 50)."""
    batch_size, n = 2, 200
    lengths = [(7 * i) % 101 + i / 1000 for i in range(n)]  # distinct
    sampler = ResumableSampler(range(n), seed=5, lengths=lengths, batch_size=batch_size)
    sampler.set_epoch(1)
    indices = list(sampler)
    batches = {tuple(indices[k : k + batch_size]) for k in range(0, n, batch_size)}
    order = torch.randperm(n, generator=torch.Generator().manual_seed(5 + 1)).tolist()
    mega = 50 * batch_size
    expected = set()
    for start in range(0, n, mega):
        chunk = sorted(order[start : start + mega], key=lambda i: -lengths[i])
        expected |= {tuple(chunk[k : k + batch_size]) for k in range(0, mega, batch_size)}
    assert batches == expected
