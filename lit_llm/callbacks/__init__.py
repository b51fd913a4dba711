"""Drop-in Lightning callbacks: each works on any LightningModule."""

from lit_llm.callbacks.warmup import WarmupSchedule

__all__ = ["WarmupSchedule"]
