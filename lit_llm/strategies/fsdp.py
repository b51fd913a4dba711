"""FSDP strategies that know how to shard Hugging Face models: wrap each transformer block, found from the model.

Users of Lightning and accelerate name the block classes by hand today (accelerate #1947, PL #16991). HF models
already list them in ``_no_split_modules`` (the classes that must never be split across devices), which is
exactly the FSDP wrapping unit; these strategies read it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from torch import nn
from typing_extensions import override

from lit_llm.compat import materialize_distributed_module, optimizers_to_device

__all__ = ["find_block_classes", "TransformerFSDP", "TransformerFSDP2", "shard_transformer"]

ShardingName = Literal["FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD"]


def find_block_classes(
    model: nn.Module, layer_classes: Iterable[str] | None = None, repeated_only: bool = False
) -> set[type[nn.Module]]:
    """The classes of the transformer blocks inside ``model``.

    Args:
        model: any module holding one or more HF ``PreTrainedModel`` (a LightningModule, say).
        layer_classes: class names to use instead of the models' ``_no_split_modules``.
        repeated_only: keep only classes with several instances (the blocks, not e.g. ``BertEmbeddings``):
            what activation checkpointing should wrap.

    Raises:
        ValueError: no names given and no submodule declares ``_no_split_modules``, or names that match no submodule.

    Example::
        find_block_classes(SequenceClassifier("bert-base-uncased", labels=["a", "b"]))  # {BertLayer}
    """
    names: set[str] = set(layer_classes or [])
    if not names:
        for module in model.modules():
            names.update(getattr(module, "_no_split_modules", None) or [])
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no HF model declaring _no_split_modules, so the transformer blocks are "
            "unknown: pass layer_classes=['MyBlock', ...] (the class names of the repeated layers)."
        )
    counts: dict[type[nn.Module], int] = {}
    for m in model.modules():
        if type(m).__name__ in names:
            counts[type(m)] = counts.get(type(m), 0) + 1
    found = {cls for cls, n in counts.items() if n > 1 or not repeated_only}
    if not found:
        raise ValueError(
            f"layer classes {sorted(names)} match no submodule of {type(model).__name__}; "
            "check the names (e.g. 'BertLayer', 'GPT2Block')."
        )
    return found


class TransformerFSDP(FSDPStrategy):
    """Lightning's ``FSDPStrategy`` (FSDP1, CUDA) with auto-wrap and activation checkpointing per transformer block.

    Select it from the CLI with ``--trainer.strategy lit_llm.strategies.TransformerFSDP``. Use the Trainer's
    ``precision="bf16-mixed"`` for bf16 mixed precision.

    Args:
        layer_classes: block class names; default: the models' ``_no_split_modules``.
        activation_checkpointing: recompute each block's activations in the backward pass.
        sharding_strategy: ``FULL_SHARD`` (ZeRO-3), ``SHARD_GRAD_OP`` (ZeRO-2), ``HYBRID_SHARD`` (full within a node,
            replicated across nodes: multi-node), ``NO_SHARD`` (DDP-like).
        state_dict_type: ``sharded`` (each rank writes its shard: fast, a directory) or ``full``.
        cpu_offload: keep parameters and gradients on CPU between uses.

    Raises:
        ValueError: at setup, a non-CUDA device (use TransformerFSDP2 on CPU), or no block classes.

    Example::
        strategy = TransformerFSDP(activation_checkpointing=True)
        Trainer(accelerator="cuda", devices=8, precision="bf16-mixed", strategy=strategy)
    """

    def __init__(
        self,
        layer_classes: list[str] | None = None,
        activation_checkpointing: bool = False,
        sharding_strategy: ShardingName = "FULL_SHARD",
        state_dict_type: Literal["full", "sharded"] = "sharded",
        cpu_offload: bool = False,
    ) -> None:
        super().__init__(sharding_strategy=sharding_strategy, state_dict_type=state_dict_type, cpu_offload=cpu_offload)
        self.layer_classes = layer_classes
        self.activation_checkpointing = activation_checkpointing

    @override
    def setup_environment(self) -> None:
        if self.root_device.type != "cuda":
            raise ValueError(
                f"TransformerFSDP runs on CUDA GPUs (FSDP1), not on {self.root_device.type!r}. On CPU use "
                "lit_llm.strategies.TransformerFSDP2 (FSDP2 through ModelParallelStrategy, gloo) or strategy='ddp'."
            )
        super().setup_environment()

    @override
    def _setup_model(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        blocks = find_block_classes(model, self.layer_classes)
        self.kwargs["auto_wrap_policy"] = ModuleWrapPolicy(blocks)
        if self.activation_checkpointing:
            repeated = tuple(find_block_classes(model, self.layer_classes, repeated_only=True))
            self._activation_checkpointing_kwargs = {"check_fn": lambda m: isinstance(m, repeated)}
        return super()._setup_model(model)


def shard_transformer(
    model: nn.Module,
    mesh: Any,
    block_classes: set[type[nn.Module]],
    *,
    activation_checkpointing: bool = False,
    reshard_after_forward: bool = True,
    mp_dtype: torch.dtype | None = None,
) -> nn.Module:
    """Apply FSDP2 ``fully_shard`` to every block, then to each HF model holding them (functional core).

    Args:
        model: the module to shard in place (a LightningModule is fine).
        mesh: a 1-D device mesh over the data-parallel ranks.
        block_classes: from :func:`find_block_classes`.
        activation_checkpointing: wrap each block in a checkpoint wrapper first.
        reshard_after_forward: free gathered parameters after forward (ZeRO-3) or keep them (ZeRO-2).
        mp_dtype: compute dtype for bf16 / fp16 mixed precision, gradients reduced in fp32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

        repeated = tuple(find_block_classes(model, [c.__name__ for c in block_classes], repeated_only=True))
        apply_activation_checkpointing(model, check_fn=lambda m: isinstance(m, repeated))
    policy = (
        MixedPrecisionPolicy(param_dtype=mp_dtype, reduce_dtype=torch.float32) if mp_dtype else MixedPrecisionPolicy()
    )
    kwargs = {"mesh": mesh, "reshard_after_forward": reshard_after_forward, "mp_policy": policy}
    roots = []
    for module in model.modules():
        if isinstance(module, tuple(block_classes)):
            fully_shard(module, **kwargs)
        elif getattr(module, "_no_split_modules", None) is not None and hasattr(module, "config"):
            roots.append(module)
    # Outermost HF models last: their remaining parameters (embeddings, heads) form one more FSDP unit each.
    for root in roots[:1] if roots else [model]:
        fully_shard(root, **kwargs)
    return model


class TransformerFSDP2(ModelParallelStrategy):
    """FSDP2 (``fully_shard`` per transformer block) through Lightning's ``ModelParallelStrategy``.

    Unlike the bare ``ModelParallelStrategy`` the module needs no ``configure_model``: the strategy shards the
    blocks itself. It runs on CPU with gloo as well as on CUDA with NCCL, and saves distributed checkpoints
    (a directory with one shard per rank) that ``lit-llm export`` consolidates.

    Args:
        layer_classes: block class names; default: the models' ``_no_split_modules``.
        activation_checkpointing: recompute each block's activations in the backward pass.
        reshard_after_forward: ZeRO-3 (True) or ZeRO-2 (False) behaviour.
        save_distributed_checkpoint: one shard per rank (True) or a full checkpoint gathered on rank 0.

    Example::
        Trainer(accelerator="cpu", devices=2, strategy=TransformerFSDP2())
    """

    def __init__(
        self,
        layer_classes: list[str] | None = None,
        activation_checkpointing: bool = False,
        reshard_after_forward: bool = True,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
    ) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
        )
        self.layer_classes = layer_classes
        self.activation_checkpointing = activation_checkpointing
        self.reshard_after_forward = reshard_after_forward

    @override
    def setup_environment(self) -> None:
        # Pure data parallelism: every process holds one shard.
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    @override
    def setup(self, trainer: pl.Trainer) -> None:
        from lightning.pytorch.trainer.states import TrainerFn

        assert self.model is not None and self.accelerator is not None
        self.accelerator.setup(trainer)
        blocks = find_block_classes(self.model, self.layer_classes)
        precision = str(trainer.precision)
        mp_dtype = (
            torch.bfloat16 if precision.startswith("bf16") else torch.float16 if precision.startswith("16") else None
        )
        shard_transformer(
            self.model,
            self.device_mesh["data_parallel"],
            blocks,
            activation_checkpointing=self.activation_checkpointing,
            reshard_after_forward=self.reshard_after_forward,
            mp_dtype=mp_dtype,
        )
        materialize_distributed_module(self.model, self.root_device)
        self.model = self.precision_plugin.convert_module(self.model)
        self.model_to_device()
        self.barrier()
        if trainer.state.fn == TrainerFn.FITTING:
            self.setup_optimizers(trainer)
        self.setup_precision_plugin()
        if trainer.state.fn == TrainerFn.FITTING:
            optimizers_to_device(self.optimizers, self.root_device)
