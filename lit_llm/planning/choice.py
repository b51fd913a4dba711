"""One candidate way to train: strategy, precision, checkpointing, optimizer, offload, micro-batch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Strategy", "Precision", "Adapter", "STRATEGIES", "PRECISIONS", "ADAPTERS", "PlanChoice"]

Strategy = Literal["ddp", "fsdp-full", "fsdp-grad-op", "fsdp-hybrid"]
Precision = Literal["32-true", "bf16-mixed", "16-mixed"]
Adapter = Literal["none", "lora", "qlora"]
STRATEGIES: tuple[Strategy, ...] = ("ddp", "fsdp-full", "fsdp-grad-op", "fsdp-hybrid")
PRECISIONS: tuple[Precision, ...] = ("32-true", "bf16-mixed", "16-mixed")
ADAPTERS: tuple[Adapter, ...] = ("none", "lora", "qlora")


@dataclass(frozen=True)
class PlanChoice:
    """The techniques of one candidate plan, on ``world_size`` devices of ``devices_per_node`` per node.

    Args:
        strategy: ``ddp`` (replicate), ``fsdp-full`` (shard weights, grads, optimizer: ZeRO-3),
            ``fsdp-grad-op`` (shard grads and optimizer: ZeRO-2), ``fsdp-hybrid`` (full shard within a node,
            replicate across nodes).
        precision: Lightning's ``precision`` flag.
        checkpointing: full activation checkpointing of every block.
        optimizer_8bit: bitsandbytes ``AdamW8bit`` instead of ``torch.optim.AdamW``.
        offload: FSDP CPU offload of weights, grads and optimizer state.
        micro_batch: sequences per device per forward.
        accumulation: micro-batches per optimizer step.
        adapter: ``none`` (full fine-tuning), ``lora`` (rank-``lora_rank`` adapters on every matmul weight of the
            blocks, the frozen base in the compute dtype: bf16 under a 16-bit precision, else fp32) or ``qlora``
            (the same adapters on a frozen 4-bit NF4 base).
        lora_rank: the adapters' rank ``r``.

    Raises:
        ValueError: an unknown strategy, precision or adapter, offload without FSDP, non-positive sizes.

    Example::
        PlanChoice("fsdp-full", "bf16-mixed", checkpointing=True, micro_batch=4, world_size=8)
    """

    strategy: Strategy = "ddp"
    precision: Precision = "32-true"
    checkpointing: bool = False
    optimizer_8bit: bool = False
    offload: bool = False
    micro_batch: int = 1
    accumulation: int = 1
    world_size: int = 1
    devices_per_node: int = 1
    adapter: Adapter = "none"
    lora_rank: int = 8

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"PlanChoice(strategy={self.strategy!r}): choose one of {', '.join(STRATEGIES)}.")
        if self.precision not in PRECISIONS:
            raise ValueError(f"PlanChoice(precision={self.precision!r}): choose one of {', '.join(PRECISIONS)}.")
        if self.offload and not self.strategy.startswith("fsdp"):
            raise ValueError(
                f"PlanChoice(offload=True, strategy={self.strategy!r}): CPU offload needs an FSDP strategy."
            )
        if self.adapter not in ADAPTERS:
            raise ValueError(f"PlanChoice(adapter={self.adapter!r}): choose one of {', '.join(ADAPTERS)}.")
        for key in ("micro_batch", "accumulation", "world_size", "devices_per_node", "lora_rank"):
            if getattr(self, key) < 1:
                raise ValueError(f"PlanChoice({key}={getattr(self, key)!r}): must be >= 1.")

    @property
    def mixed(self) -> bool:
        return self.precision != "32-true"

    @property
    def shard_divisor(self) -> int:
        """What gradients and optimizer states are divided by: the shard group under FSDP, 1 under DDP."""
        return self.shard_group if self.strategy != "ddp" else 1

    @property
    def shard_group(self) -> int:
        """How many devices share one copy of the sharded state."""
        if self.strategy == "fsdp-hybrid":
            return min(self.devices_per_node, self.world_size)
        return self.world_size if self.strategy.startswith("fsdp") else 1

    @property
    def label(self) -> str:
        parts: list[str] = [self.strategy, self.precision]
        if self.adapter != "none":
            parts.append(f"{self.adapter}-r{self.lora_rank}")
        if self.checkpointing:
            parts.append("ckpt")
        if self.optimizer_8bit:
            parts.append("adam8bit")
        if self.offload:
            parts.append("offload")
        parts.append(f"mb{self.micro_batch}x{self.accumulation}")
        return " ".join(parts)

    @property
    def complexity(self) -> int:
        """How many non-default techniques this plan uses, weighted; ties go to the simpler plan.

        8-bit AdamW and offload count double: they change the optimizer's numerics or move it off the device.
        """
        return (
            int(self.strategy != "ddp") + int(self.strategy == "fsdp-hybrid") + int(self.checkpointing)
            + 2 * int(self.optimizer_8bit) + 2 * int(self.offload) + int(self.accumulation > 1)
            + int(self.precision == "16-mixed")  # needs a loss scaler; bf16 does not
        )

    def replace(self, **changes: Any) -> PlanChoice:
        return dataclasses.replace(self, **changes)
