"""LightningDataModules: data knows nothing of the model that consumes it."""

from lit_llm.datamodules.corpus import TextCorpusDataModule
from lit_llm.datamodules.resumable import ResumableDataLoader, ResumableSampler, ResumableStreamLoader
from lit_llm.datamodules.text_classification import TextClassificationDataModule
from lit_llm.datamodules.token_classification import TokenClassificationDataModule

__all__ = [
    "ResumableDataLoader",
    "ResumableSampler",
    "ResumableStreamLoader",
    "TextCorpusDataModule",
    "TextClassificationDataModule",
    "TokenClassificationDataModule",
]
