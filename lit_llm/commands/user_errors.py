"""Which errors are the user's (printed as one line by ``lit-llm``), and the ``--ckpt_path`` check that makes a bad
checkpoint one of them before LightningCLI reads it.

Example::
    try:
        ...
    except Exception as err:
        if (cause := user_error(err)) is None:
            raise
        print(f"lit-llm: {cause}", file=sys.stderr)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lit_llm.errors import UserInputError
from lit_llm.training.checkpointing import CheckpointError, load_checkpoint_file, require_lightning_checkpoint

__all__ = ["is_user_error", "user_error", "validate_ckpt_path"]


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is the user's mistake, reported by its message alone, rather than a possible bug.

    The set is explicit, because ``ValueError`` or ``OSError`` in general can just as well be bugs:
    any :class:`~lit_llm.errors.UserInputError` (``DataFileError``, ``CheckpointError``, ...), and a
    ``FileNotFoundError`` built with a message only (``errno`` None): every input check, ours and the libraries',
    raises it that way naming the path, while one from a failed ``open()`` carries an errno and may be our bug.
    A plain ``ValueError`` keeps its traceback; argument checks that want the short form raise
    :class:`~lit_llm.errors.InvalidArgumentError`.

    Example::
        is_user_error(FileNotFoundError("data/train.csv: no such file"))  # True
        is_user_error(ValueError("shapes differ"))  # False: may be a bug, keeps its traceback
    """
    if isinstance(err, UserInputError):
        return True
    return isinstance(err, FileNotFoundError) and err.errno is None


def user_error(err: BaseException) -> BaseException | None:
    """The user error that ``err`` is, or was raised from (``raise ... from``), or None.

    jsonargparse wraps an ``__init__`` error of a ``trainer.callbacks`` entry in its own ``ValueError`` ("Does not
    validate against any of the Union subtypes") raised from it; the user needs the inner message, not the wrapper.
    Only explicit causes are followed, never the context of an error raised while handling another.

    Example::
        user_error(wrapper)  # the DataFileError that jsonargparse's ValueError was raised from
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if is_user_error(current):
            return current
        seen.add(id(current))
        current = current.__cause__
    return None


def validate_ckpt_path(ckpt_path: str | None) -> None:
    """Check a ``--ckpt_path`` file with lit-llm's safe loader before LightningCLI or the Trainer read it.

    LightningCLI reads a checkpoint's hyperparameters as soon as the arguments are parsed: with torch's message
    (which advises ``weights_only=False``, i.e. running the file's code) for a file that is not a plain checkpoint.
    Loading it first with :func:`~lit_llm.training.checkpointing.load_checkpoint_file` (``weights_only=True``) turns a
    corrupt, foreign or code-carrying file into a :class:`~lit_llm.training.checkpointing.CheckpointError` naming it.
    Keywords (``last``, ``best``) and directories (sharded checkpoints) are left to the Trainer.

    LightningCLI then parses the hyperparameters into the config, importing the module of every ``class_path``
    they name: a module import runs that module's code. So each class path in the hyperparameters must come from a
    module this run has already imported (the config's own classes are imported when it is parsed).

    Raises:
        CheckpointError: the file is not a readable Lightning checkpoint, or its hyperparameters name a class of a
            module the run has not imported.

    Example::
        validate_ckpt_path("runs/rt/version_0/checkpoints/last.ckpt")  # returns, or raises CheckpointError
    """
    if not ckpt_path or not Path(ckpt_path).is_file():
        return
    checkpoint = require_lightning_checkpoint(load_checkpoint_file(ckpt_path), ckpt_path)
    for class_path in _class_paths(checkpoint.get("hyper_parameters")):
        module = class_path.rpartition(".")[0]
        if module not in sys.modules:
            raise CheckpointError(
                f"{ckpt_path}: its hyper_parameters name the class {class_path!r} of module {module!r}, which this run "
                "has not imported; lit-llm does not import code because a checkpoint names it. If you trust it, name "
                "the class in your config (e.g. --model.class_path), or resume a checkpoint written by this model."
            )


def _class_paths(value: Any) -> list[str]:
    """Every string under a ``class_path`` / ``_class_path`` key of nested dicts and lists."""
    if isinstance(value, dict):
        found = [v for k, v in value.items() if k in ("class_path", "_class_path") and isinstance(v, str)]
        return found + [p for v in value.values() for p in _class_paths(v)]
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _class_paths(v)]
    return []
