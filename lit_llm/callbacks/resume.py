"""Resume a killed run exactly where its last checkpoint left it: the same batches, the same random numbers.

Lightning's checkpoint holds weights, optimizer, schedulers, loop counters and callback states, but not the
random number generators (dropout, random masking, augmentation draw from them), and a train dataloader
restarts its epoch unless it is stateful. This callback saves every rank's RNG states and the position in the
epoch, and puts both back just before the first resumed batch. With a
:class:`~lit_llm.datamodules.ResumableDataLoader` (every lit-llm datamodule's training loader) the resumed run
then ends with the same weights as a run that was never interrupted (bitwise on CPU with deterministic
algorithms).

It also restores the position of a ``ResumableDataLoader`` when Lightning would not: Lightning loads the loader
state only if the train dataloader is created after the checkpoint is restored, which is not the case once anything
called ``trainer.estimated_stepping_batches`` during setup (Lightning issue #20550; our ``GlobalBatchSize`` and any
``OneCycleLR`` do). It acts only on that type: any other loader with ``state_dict`` / ``load_state_dict``
(torchdata's ``StatefulDataLoader``, litdata's ``StreamingDataLoader``) keeps the state Lightning restored in its
own format, and a streaming corpus's ``ResumableStreamLoader`` positions itself from the restored fit loop.
"""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lit_llm.datamodules.resumable import ResumableDataLoader

__all__ = ["ExactResume", "get_rng_states", "set_rng_states"]


def get_rng_states() -> dict[str, Any]:
    """This process's RNG states (torch CPU and CUDA, Python, NumPy), in types ``weights_only`` loading accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (
            str(name),
            torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`get_rng_states`."""
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _train_loaders(trainer: pl.Trainer) -> list[Any]:
    loaders: Any = trainer.train_dataloader
    if hasattr(loaders, "flattened"):  # a CombinedLoader
        return list(loaders.flattened)
    if isinstance(loaders, dict):
        return list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        return list(loaders)
    return [] if loaders is None else [loaders]


def _has(obj: Any, method: str) -> bool:
    return callable(getattr(obj, method, None))


class ExactResume(Callback):
    """Save the RNG states of every rank and the position in the epoch; restore both on resume.

    The ``lit-llm`` CLI adds it to every run. In your own project add it next to a ``ModelCheckpoint`` that saves
    during the epoch, and give the Trainer a train loader that can resume mid-epoch: a
    :class:`~lit_llm.datamodules.ResumableDataLoader` (whose position this callback restores), or your own stateful
    loader such as torchdata's ``StatefulDataLoader`` (restored by Lightning; this callback leaves it alone). On
    resume it warns once if the loader has no ``state_dict`` / ``load_state_dict`` at all.

    Example::
        Trainer(callbacks=[ExactResume(), ModelCheckpoint(every_n_train_steps=500, save_last=True)])
        trainer.fit(model, datamodule=dm, ckpt_path="path/to/last.ckpt")
    """

    def __init__(self) -> None:
        self._trainer: pl.Trainer | None = None
        self._loaded: dict[str, Any] | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    @override
    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        if trainer is None or trainer.state.fn != "fit":
            return {}
        states = get_rng_states()
        # Checkpoints are dumped on every rank and written by rank 0: gather each rank's generators.
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, states)
        else:
            gathered = [states]
        loop = trainer.fit_loop
        epoch: Any = loop.epoch_progress.current  # a _ProcessedTracker at run time (the epoch Lightning's samplers get)
        batches: Any = loop.epoch_loop.batch_progress.current
        return {"rng": gathered, "epoch": epoch.processed, "batches": batches.processed}  # consumed in this epoch

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = dict(state_dict) or None

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loaded, self._loaded = self._loaded, None
        if loaded is None:
            return
        # Nothing between here and the first resumed batch draws random numbers: the loader's iterator has not
        # started (ResumableDataLoader iterates lazily) and evaluation has run (sanity check) before this hook.
        position = {"epoch": int(loaded["epoch"]), "batches": int(loaded["batches"])}
        stateless = []
        for loader in _train_loaders(trainer):
            if isinstance(loader, ResumableDataLoader):
                loader.load_state_dict(position)
            elif not (_has(loader, "load_state_dict") and _has(loader, "state_dict")):
                stateless.append(type(loader).__name__)
            # Any other stateful loader (torchdata's StatefulDataLoader, litdata's StreamingDataLoader) has its own
            # state format, which Lightning saved and restored with the fit loop: our position would corrupt it.
        if stateless and position["batches"]:
            rank_zero_warn(
                f"ExactResume: the train loader ({', '.join(stateless)}) has no state_dict/load_state_dict, so the "
                f"resumed epoch {position['epoch']} starts again from its first batch instead of batch "
                f"{position['batches']}. Use lit_llm.datamodules.ResumableDataLoader for an exact resume."
            )
        rng = loaded["rng"]
        rank = trainer.global_rank
        if rank < len(rng):
            set_rng_states(rng[rank])
        else:
            rank_zero_warn(
                f"ExactResume: the checkpoint holds RNG states of {len(rng)} ranks, this run has "
                f"{trainer.world_size}; ranks without a saved state keep their seeded generators."
            )
