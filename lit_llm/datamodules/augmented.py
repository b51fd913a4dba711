"""The training loader of an augmented split: examples edited on the fly, each a pure function of (seed, epoch, index).

Augmentation happens when an example is loaded, not once before training, so every epoch sees new edits; and an
example's edits come from its own generator :func:`~lit_llm.text.augmentation.example_rng` ``(seed, epoch,
index)``, never from a shared stream. So an epoch's batches do not depend on which batches were loaded before: the
:class:`~lit_llm.datamodules.resumable.ResumableDataLoader` of a resumed run skips the batches already trained on
and the rest come out exactly as in the run it continues.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from lit_llm.datamodules.resumable import ResumableDataLoader
from lit_llm.text.augmentation import example_rng

__all__ = ["AugmentedDataset", "augmented_loader"]


class AugmentedDataset(Dataset):
    """``base[index]`` passed through ``transform(example, rng)`` with the example's own generator.

    The epoch is read from the loader's sampler (Lightning sets it at each epoch start), see :func:`augmented_loader`.

    Args:
        base: a map-style dataset of examples.
        transform: returns the (possibly) augmented, model-ready example.
        seed: the augmentation seed.
    """

    def __init__(self, base: Any, transform: Callable[[Any, random.Random], dict[str, Any]], seed: int) -> None:
        self.base = base
        self.transform = transform
        self.seed = seed
        self.sampler: Any = None

    def __len__(self) -> int:
        return len(self.base)

    @property
    def epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", 0))

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.transform(self.base[index], example_rng(self.seed, self.epoch, index))


def augmented_loader(
    dataset: AugmentedDataset,
    *,
    batch_size: int,
    collate_fn: Callable[[list[Any]], Any],
    num_workers: int = 0,
    seed: int = 0,
    lengths: Sequence[int] | None = None,
) -> ResumableDataLoader:
    """The shuffled, resumable training loader of an augmented dataset, whose epoch follows the loader's sampler.

    Workers are not persistent: each epoch's workers get a fresh copy of the dataset, with that epoch.
    ``lengths`` (of the examples before their edits) groups the batches by length.
    """
    loader = ResumableDataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        seed=seed,
        lengths=lengths,
        collate_fn=collate_fn,
        num_workers=num_workers,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(seed),
    )
    dataset.sampler = loader.sampler
    return loader
