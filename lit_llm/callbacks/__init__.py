"""Drop-in Lightning callbacks: each works on any LightningModule."""

from lit_llm.callbacks.distillation import DistillationTeacher
from lit_llm.callbacks.ema import EMA
from lit_llm.callbacks.finite_loss import NonFiniteLossError, StopOnNonFiniteLoss
from lit_llm.callbacks.global_batch import GlobalBatchSize
from lit_llm.callbacks.lora import LoRA
from lit_llm.callbacks.low_rank import LowRankFactorization
from lit_llm.callbacks.progress import PlainProgressBar
from lit_llm.callbacks.pruning import Pruning
from lit_llm.callbacks.quantization import Int8Quantization
from lit_llm.callbacks.resume import ExactResume
from lit_llm.callbacks.stage_times import StageTimes
from lit_llm.callbacks.throughput import TransformerThroughputMonitor
from lit_llm.callbacks.warmup import WarmupSchedule

__all__ = [
    "DistillationTeacher",
    "EMA",
    "ExactResume",
    "NonFiniteLossError",
    "StopOnNonFiniteLoss",
    "Int8Quantization",
    "LoRA",
    "LowRankFactorization",
    "PlainProgressBar",
    "Pruning",
    "StageTimes",
    "GlobalBatchSize", "TransformerThroughputMonitor", "WarmupSchedule"]
