"""lit-llm: PyTorch Lightning plugins for training and compressing transformer language models."""

__version__ = "0.1.0"
