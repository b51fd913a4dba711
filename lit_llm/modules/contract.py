"""The contract between lit-llm's modules and a datamodule: what a module reads from ``trainer.datamodule``.

A module reads the datamodule once, at ``setup`` (Lightning has run the datamodule's own ``setup`` by then), through
:func:`read_datamodule`. Each attribute is optional: a datamodule that lacks one leaves the module's own argument
in charge. Ours satisfy the protocols below; a user's datamodule does by having the attributes (or properties)::

    class MyData(pl.LightningDataModule):
        labels = ["negative", "positive"]   # SequenceClassifier / TokenClassifier take their head from it
        multi_label = False

Protocols, one per role (structural: no base class to inherit):

- :class:`LabelledData` (``labels``): the classifiers.
- :class:`TextClassificationData` (``labels``, ``multi_label``, ``regression``): :class:`SequenceClassifier`.
- :class:`CorpusData` (``tokenizer``, ``block_size``, ``nsp``, ``nsp_negatives``): the language models.

A ``labels`` property may raise ``ValueError`` when the datamodule cannot know them (a predict-only split): the
module then uses its own labels, and raises the datamodule's error only when it has none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import lightning.pytorch as pl

__all__ = ["CorpusData", "DataContract", "LabelledData", "TextClassificationData", "read_datamodule"]


@runtime_checkable
class LabelledData(Protocol):
    """A datamodule whose examples carry class or tag labels."""

    @property
    def labels(self) -> Sequence[str]:
        """Label (or tag) names in id order."""
        ...


@runtime_checkable
class TextClassificationData(LabelledData, Protocol):
    """A datamodule of labelled texts: ``multi_label`` (several labels per text), ``regression`` (one number)."""

    @property
    def multi_label(self) -> bool: ...

    @property
    def regression(self) -> bool: ...


@runtime_checkable
class CorpusData(Protocol):
    """A datamodule of raw text for language modelling."""

    @property
    def tokenizer(self) -> Any:
        """A ``PreTrainedTokenizerBase`` once the datamodule's ``setup`` ran (None before)."""
        ...

    @property
    def block_size(self) -> int: ...

    @property
    def nsp(self) -> bool: ...

    @property
    def nsp_negatives(self) -> str: ...


@dataclass(frozen=True)
class DataContract:
    """What a module read from its datamodule; None where the datamodule does not say.

    Attributes:
        labels: label names in id order.
        labels_error: the error a ``labels`` property raised (re-raised by :meth:`require_labels`).
        multi_label, regression: the datamodule's task kind.
        tokenizer: the datamodule's tokenizer (a corpus datamodule trains or loads it in its ``setup``).
        block_size: tokens per example.
        nsp_negatives: the kind of sentence pairs the datamodule builds (None when it builds none).
    """

    labels: list[str] | None = None
    labels_error: ValueError | None = None
    multi_label: bool | None = None
    regression: bool | None = None
    tokenizer: Any = None
    block_size: int | None = None
    nsp_negatives: str | None = None

    def require_labels(self, owner: str) -> list[str]:
        """The labels, or the datamodule's own error, or one that says where labels come from."""
        if self.labels is not None:
            return self.labels
        if self.labels_error is not None:
            raise self.labels_error
        raise ValueError(
            f"{owner}(labels=None) takes its labels from trainer.datamodule.labels, and there is none: pass "
            "labels=[...], load a fine-tuned model with id2label, or use a datamodule with a `labels` attribute "
            "(TextClassificationDataModule, TokenClassificationDataModule)."
        )


def read_datamodule(module: pl.LightningModule) -> DataContract:
    """The contract attributes of ``module.trainer.datamodule`` (an empty contract without trainer or datamodule).

    Example::
        data = read_datamodule(self)       # in a module's setup
        labels = data.labels or self.labels
    """
    datamodule = getattr(module.trainer, "datamodule", None) if module._trainer is not None else None
    if datamodule is None:
        return DataContract()
    labels: list[str] | None = None
    labels_error: ValueError | None = None
    try:
        value = getattr(datamodule, "labels", None)
    except ValueError as error:  # a datamodule that cannot know its labels (e.g. a predict-only split)
        labels_error = error
    else:
        labels = list(value) if value else None
    return DataContract(
        labels=labels,
        labels_error=labels_error,
        multi_label=_flag(datamodule, "multi_label"),
        regression=_flag(datamodule, "regression"),
        tokenizer=getattr(datamodule, "tokenizer", None),
        block_size=getattr(datamodule, "block_size", None),
        nsp_negatives=getattr(datamodule, "nsp_negatives", None) if getattr(datamodule, "nsp", False) else None,
    )


def _flag(datamodule: Any, name: str) -> bool | None:
    value = getattr(datamodule, name, None)
    return None if value is None else bool(value)


if TYPE_CHECKING:  # mypy checks that our datamodules satisfy the protocols their modules read

    def _our_datamodules_conform() -> None:
        from lit_llm.datamodules import (
            TextClassificationDataModule,
            TextCorpusDataModule,
            TokenClassificationDataModule,
        )

        text: TextClassificationData = TextClassificationDataModule("m")
        tokens: LabelledData = TokenClassificationDataModule("m")
        corpus: CorpusData = TextCorpusDataModule()
        del text, tokens, corpus
