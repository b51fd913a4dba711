"""LightningModules wrapping Hugging Face models, one task per file."""

from lit_llm.modules.sequence_classification import SequenceClassifier
from lit_llm.modules.token_classification import TokenClassifier

__all__ = ["SequenceClassifier", "TokenClassifier"]
