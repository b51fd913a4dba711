"""A training DataLoader that can resume in the middle of an epoch, batch for batch.

A plain ``DataLoader(shuffle=True)`` draws each epoch's order from a generator whose state is not in the
checkpoint, and restarts the epoch from its first batch after a resume, so a resumed run sees other batches
than the run it continues. Here the order of epoch ``e`` is a pure function of ``(seed, e)``
(``DistributedSampler``'s permutation, sharded across ranks), and the loader counts the batches it yielded in the
epoch: its ``state_dict`` (saved by Lightning's fit loop in every checkpoint) lets the resumed run skip exactly
those batches, without loading them.

torchdata's ``StatefulDataLoader`` does this too, but it is not a dependency of Lightning or of ours, and it
saves the sampler's state rather than a position in a reproducible order.

:class:`ResumableStreamLoader` does the same for a stream whose order is a pure function of ``(seed, epoch)`` (a
``datasets`` streaming corpus shuffled with a seed): it gives the dataset Lightning's epoch, and on resume it
replays the interrupted epoch up to the position instead of skipping by index.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence, Sized
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, Sampler

__all__ = ["ResumableSampler", "ResumableDataLoader", "ResumableStreamLoader"]


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` whose replicas default to the current process group (one replica without one),
    and which can start an epoch part-way, at a sample offset set by :meth:`skip`.

    Being a ``DistributedSampler`` already, Lightning keeps it under DDP instead of replacing it, and calls its
    ``set_epoch`` at each epoch start.

    With ``lengths`` (one per example, in tokens) and ``batch_size`` (per replica) the shuffled order is grouped
    by length, as the HF Trainer's ``train_sampling_strategy="group_by_length"``: the epoch's permutation is cut
    into mega-batches of 50 global batches (``batch_size`` x replicas), each sorted by length, cut into global
    batches, and the batches are shuffled. Each replica's batch then holds examples of about one length, so
    dynamic padding pads little, and every example is still seen once an epoch in an order that is a pure
    function of ``(seed, epoch)``.
    (transformers' ``LengthGroupedSampler`` groups the same way but is neither resumable nor shardable here:
    Lightning would wrap it and re-shard its list, and it draws from the global RNG without a seed.)
    """

    MEGA_BATCHES = 50

    def __init__(
        self,
        dataset: Sized,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        lengths: Sequence[int] | None = None,
        batch_size: int = 1,
    ) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        super().__init__(
            dataset,  # type: ignore[arg-type]
            num_replicas=dist.get_world_size() if distributed else 1,
            rank=dist.get_rank() if distributed else 0,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self._skip: tuple[int, int] | None = None  # (epoch, samples of this rank to skip)
        if lengths is not None and len(lengths) != len(dataset):
            raise ValueError(f"lengths has {len(lengths)} entries for a dataset of {len(dataset)} examples")
        self.lengths = list(lengths) if lengths is not None else None
        self.batch_size = batch_size

    def skip(self, epoch: int, samples: int) -> None:
        """Start the next iteration of ``epoch`` after its first ``samples`` samples (ignored for other epochs)."""
        self._skip = (epoch, samples)

    def _grouped(self, lengths: list[int]) -> list[int]:
        """This replica's share of the epoch's length-grouped order (see the class docstring)."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(lengths), generator=g).tolist() if self.shuffle else list(range(len(lengths)))
        group = self.batch_size * self.num_replicas
        mega = group * self.MEGA_BATCHES
        batches: list[list[int]] = []
        for start in range(0, len(order), mega):
            chunk = sorted(order[start : start + mega], key=lambda i: -lengths[i])
            batches += [chunk[k : k + group] for k in range(0, len(chunk), group)]
        last = batches.pop() if batches and len(batches[-1]) < group else None  # a short batch stays last
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        indices = [i for batch in batches + ([last] if last is not None else []) for i in batch]
        # Padded or cut to a multiple of the replicas, as DistributedSampler does, then sharded by stride.
        if self.drop_last:
            indices = indices[: self.total_size]
        else:
            pad = self.total_size - len(indices)
            indices += (indices * math.ceil(pad / len(indices)))[:pad] if pad > 0 else []
        return indices[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        indices = self._grouped(self.lengths) if self.lengths is not None else list(super().__iter__())
        skip, self._skip = self._skip, None
        if skip is not None and skip[0] == self.epoch:
            indices = indices[skip[1] :]
        return iter(indices)


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` with ``state_dict`` / ``load_state_dict`` that resumes mid-epoch exactly.

    It samples a map-style dataset with a :class:`ResumableSampler` (seeded by ``seed``; ``shuffle`` as in
    ``DataLoader``) and skips already-consumed batches by index. ``generator`` defaults to one seeded with
    ``seed``, so creating an iterator never draws from the global RNG (which would shift dropout after a
    resume). ``lengths`` (tokens per example) groups batches by length (see :class:`ResumableSampler`).
    Iterable (streaming) datasets are refused: their position cannot be restored by index, and
    Lightning prefetches one batch of them ahead of the step, so a yielded-batch count would be off by one.

    Lightning saves ``state_dict()`` with the fit loop in each checkpoint and loads it when resuming; the
    :class:`~lit_llm.callbacks.ExactResume` callback also restores it from the loop's own batch counter.

    Example::
        loader = ResumableDataLoader(dataset, batch_size=32, shuffle=True, seed=13, collate_fn=collator)
        trainer.fit(model, train_dataloaders=loader, ckpt_path="last")
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int = 1,
        shuffle: bool = False,
        *,
        seed: int = 0,
        lengths: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(dataset, IterableDataset):
            raise TypeError(
                f"ResumableDataLoader needs a map-style dataset, got the iterable {type(dataset).__name__}: "
                "use a plain DataLoader (a resume then restarts the interrupted epoch) or a map-style dataset"
            )
        for key in ("sampler", "batch_sampler"):
            if kwargs.get(key) is not None:
                raise TypeError(f"ResumableDataLoader makes its own sampler; do not pass {key}=")
        self.seed = seed
        kwargs.setdefault("generator", torch.Generator().manual_seed(seed))
        sampler = ResumableSampler(
            dataset, shuffle=shuffle, seed=seed, drop_last=kwargs.get("drop_last", False), lengths=lengths,
            batch_size=batch_size,
        )
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self._yielded = 0
        self._pending: dict[str, int] | None = None

    @property
    def epoch(self) -> int:
        """The epoch Lightning last set on the sampler."""
        return int(self.sampler.epoch)  # type: ignore[attr-defined]

    def state_dict(self) -> dict[str, int]:
        """The epoch and how many of its batches this loader has yielded."""
        return {"epoch": self.epoch, "batches": self._yielded}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Make the next iteration of ``state_dict["epoch"]`` skip its first ``state_dict["batches"]`` batches."""
        self._pending = {"epoch": int(state_dict["epoch"]), "batches": int(state_dict["batches"])}

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        # A generator: nothing runs until the first batch is requested, which is after Lightning has restored
        # the checkpoint and set the epoch (Lightning creates the iterator earlier than both).
        return self._batches()

    def _batches(self) -> Iterator[Any]:
        pending, self._pending = self._pending, None
        skip = pending["batches"] if pending is not None and pending["epoch"] == self.epoch else 0
        if skip:
            self.sampler.skip(self.epoch, skip * (self.batch_size or 1))  # type: ignore[attr-defined]
        self._yielded = skip
        for batch in super().__iter__():
            self._yielded += 1
            yield batch


class _EpochSampler(Sampler[None]):
    """Stands in for the placeholder sampler a DataLoader gives an iterable dataset, to receive ``set_epoch``.

    Lightning's fit loop calls ``set_epoch`` on ``loader.sampler`` (and ``loader.batch_sampler.sampler``) at each
    epoch start and never on the dataset; like the placeholder it replaces, it yields ``None`` forever.
    """

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[None]:
        return itertools.repeat(None)


class ResumableStreamLoader(DataLoader):
    """A ``DataLoader`` over a stream with a reproducible order per epoch, which resumes mid-epoch exactly.

    The dataset is an ``IterableDataset`` with ``set_epoch(epoch)`` whose order is a pure function of its seed and
    the epoch (:class:`~lit_llm.datamodules.corpus.StreamingBlocks` over a seeded ``datasets`` stream). When an
    epoch's iteration starts, the loader hands the dataset its epoch.

    Position: given the ``trainer`` (``TextCorpusDataModule`` gives its own), the loader reads the epoch and, on a
    resumed fit, the number of batches the interrupted epoch had trained on from the fit loop Lightning restored
    from the checkpoint, at the moment Lightning starts iterating. (Lightning fetches the first batch of an
    iterable loader ahead, before it sets the epoch on samplers and before any callback's ``on_train_start``, so
    neither :class:`~lit_llm.callbacks.ExactResume` nor the sampler epoch could arrive in time; checked on
    lightning 2.6.) Without a trainer, :meth:`load_state_dict` sets the position by hand. The next iteration of
    that epoch then reads, and drops, its first ``batches`` batches: the stream is replayed, so the resumed run
    gets exactly the batches the interrupted one had not trained on, at the cost of reading and tokenizing the
    part of the epoch already done.

    ``datasets``' own ``IterableDataset.state_dict`` is not used: it loses the documents that were in the shuffle
    buffer on resume (their documented limitation; we measured a loss of data), and in dataloader workers it
    lives in the workers. The loader has no ``state_dict``, so Lightning does not save a loader state for it.

    Example::
        def train_dataloader(self):
            blocks = StreamingBlocks(docs, "text", tokenizer, 128, packing=True)
            return ResumableStreamLoader(blocks, batch_size=16, trainer=self.trainer)
    """

    def __init__(self, dataset: IterableDataset, batch_size: int | None = 1, *, trainer: Any = None,
                 **kwargs: Any) -> None:
        if not isinstance(dataset, IterableDataset) or not callable(getattr(dataset, "set_epoch", None)):
            raise TypeError(
                f"ResumableStreamLoader needs an IterableDataset with set_epoch(epoch), got {type(dataset).__name__}; "
                "for a map-style dataset use ResumableDataLoader"
            )
        # A seeded generator, so creating an iterator never draws from the global RNG (which would shift dropout
        # after a resume: Lightning creates the first iterator before ExactResume restores the RNG).
        kwargs.setdefault("generator", torch.Generator().manual_seed(0))
        super().__init__(dataset, batch_size=batch_size, **kwargs)
        sampler = _EpochSampler()
        # DataLoader refuses a sampler for an iterable dataset and any sampler set after __init__; this one is
        # never used to index, only to receive Lightning's set_epoch (checked on torch 2.13, lightning 2.6).
        object.__setattr__(self, "sampler", sampler)
        if self.batch_sampler is not None:
            self.batch_sampler.sampler = sampler  # type: ignore[attr-defined]
        self.trainer = trainer
        self._pending: dict[str, int] | None = None

    @property
    def epoch(self) -> int:
        """The epoch of the current (or next) iteration."""
        return self.sampler.epoch  # type: ignore[attr-defined]

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Make the next iteration of ``state_dict["epoch"]`` drop its first ``state_dict["batches"]`` batches."""
        self._pending = {"epoch": int(state_dict["epoch"]), "batches": int(state_dict["batches"])}

    def _follow_fit_loop(self, loop: Any) -> None:
        """Take the epoch, and on a resume the position, that Lightning's fit loop is about to run.

        Lightning starts iterating before its ``reset`` settles a restored epoch, so this reads the restored
        progress the way that ``reset`` does (``FitLoop.reset`` / ``update_restart_stage``, lightning 2.6): a
        checkpoint taken at the last batch of an epoch (started, not yet processed) continues with the next epoch
        from its start; one taken mid-epoch continues that epoch after its processed batches.
        """
        progress, batches = loop.epoch_progress.current, loop.epoch_loop.batch_progress
        epoch = progress.processed
        mid_epoch = loop.restarting and progress.processed < progress.started
        if mid_epoch and batches.is_last_batch:
            epoch += 1
        self.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        if mid_epoch and not batches.is_last_batch and batches.current.processed:
            self.load_state_dict({"epoch": epoch, "batches": batches.current.processed})

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        # A generator: nothing runs until the first batch is requested, after Lightning restored the checkpoint.
        return self._batches()

    def _batches(self) -> Iterator[Any]:
        if self.trainer is not None and getattr(self.trainer.state, "fn", None) == "fit":
            self._follow_fit_loop(self.trainer.fit_loop)
        pending, self._pending = self._pending, None
        skip = pending["batches"] if pending is not None and pending["epoch"] == self.epoch else 0
        self.dataset.set_epoch(self.epoch)  # type: ignore[attr-defined]
        batches = super().__iter__()
        if skip and next(itertools.islice(batches, skip - 1, skip), None) is None:
            return  # the epoch had ended at the checkpoint
        yield from batches
