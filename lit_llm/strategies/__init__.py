"""Distributed strategies that know how to shard Hugging Face models."""

from lit_llm.strategies.fsdp import TransformerFSDP, TransformerFSDP2, find_block_classes, shard_transformer

__all__ = ["TransformerFSDP", "TransformerFSDP2", "find_block_classes", "shard_transformer"]
