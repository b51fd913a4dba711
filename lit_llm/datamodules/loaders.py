"""The DataLoader every lit-llm datamodule builds for a prepared split."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from lit_llm.datamodules.resumable import ResumableDataLoader

__all__ = ["sorted_by_length", "split_loader"]


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
    sort_eval_by_length: bool = False,
) -> DataLoader:
    """A loader over ``datasets[split]``; the shuffled (training) one resumes mid-epoch exactly, and groups its
    batches by length when given the examples' ``lengths`` (see :class:`~lit_llm.datamodules.ResumableSampler`).
    With ``sort_eval_by_length`` the validation and test splits go shortest first (:func:`sorted_by_length`);
    predict keeps the file's order.

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
    sort = sort_eval_by_length and split in ("validation", "test")
    dataset = sorted_by_length(datasets[split]) if sort else datasets[split]
    return DataLoader(dataset, shuffle=False, **kwargs)


def sorted_by_length(dataset: Any) -> Any:
    """``dataset`` in order of its examples' ``input_ids`` lengths, ties in file order.

    For evaluation: each batch then holds examples of about one length, so dynamic padding pads little (on the
    Rotten Tomatoes validation split at batch 128, 39k batch cells instead of 76k). Metrics that sum over the
    split do not depend on the order. An HF ``Dataset`` is reordered with ``select`` (an index, no copy), any
    other map-style dataset through a ``Subset``.
    """
    if "input_ids" in (getattr(dataset, "column_names", None) or ()):
        lengths = [len(ids) for ids in dataset["input_ids"]]  # one column, not every field of every row
    else:
        lengths = [len(example["input_ids"]) for example in dataset]
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    if hasattr(dataset, "select"):
        return dataset.select(order)
    return torch.utils.data.Subset(dataset, order)
