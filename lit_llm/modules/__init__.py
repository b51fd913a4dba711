"""LightningModules wrapping Hugging Face models, one task per file."""

from lit_llm.modules.causal_lm import CausalLanguageModel
from lit_llm.modules.masked_lm import MaskedLanguageModel
from lit_llm.modules.sequence_classification import SequenceClassifier
from lit_llm.modules.token_classification import TokenClassifier

__all__ = ["CausalLanguageModel", "MaskedLanguageModel", "SequenceClassifier", "TokenClassifier"]
