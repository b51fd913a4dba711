"""The DataLoader every lit-llm datamodule builds for a prepared split."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from lit_llm.datamodules.resumable import ResumableDataLoader

__all__ = ["split_loader"]


def split_loader(
    datasets: Mapping[str, Any],
    split: str,
    *,
    batch_size: int,
    shuffle: bool,
    collate_fn: Callable[[list[Any]], Any],
    num_workers: int = 0,
    seed: int = 0,
    lengths: Sequence[int] | None = None,
) -> DataLoader:
    """A loader over ``datasets[split]``; the shuffled (training) one resumes mid-epoch exactly, and groups its
    batches by length when given the examples' ``lengths`` (see :class:`~lit_llm.datamodules.ResumableSampler`).

    Every loader has its own seeded generator, so creating one never draws from the global RNG.

    Raises:
        RuntimeError: the split was not prepared (``setup`` not called, or no file for it).
    """
    if split not in datasets:
        raise RuntimeError(f"no {split} split: call setup() first or give the {split} file")
    kwargs: dict[str, Any] = dict(
        batch_size=batch_size,
        collate_fn=collate_fn,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
    if shuffle:
        return ResumableDataLoader(datasets[split], shuffle=True, seed=seed, lengths=lengths, **kwargs)
    return DataLoader(datasets[split], shuffle=False, **kwargs)
