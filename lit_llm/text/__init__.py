"""Text processing that both modules and datamodules use: ``masking`` (80/10/10, whole words), ``segmentation``
(word boundaries for text written without spaces), ``sentence_order`` (NSP / SOP pairs), ``entities`` (tag
schemes, spans, entity F1), ``augmentation`` and ``tokenizer_training``."""
