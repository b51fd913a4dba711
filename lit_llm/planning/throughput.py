"""Step time of a plan: FLOPs at an expected MFU, a per-kernel overhead, and communication over the links.

Training FLOPs per token are ``6N + 12*L*s*h`` (Kaplan et al. 2020; ``N`` the matmul parameters, the second
term attention's ``QK^T`` and ``AV``); full activation checkpointing runs the blocks' forward twice, so their
share grows by 4/3. Communication volume per optimizer step and device:

- DDP: one ring all-reduce of the fp32 gradients, ``2 (W-1)/W * 4N`` bytes, once per optimizer step (Lightning
  skips the sync on accumulation micro-batches);
- FSDP full: all-gather in forward and in backward plus a reduce-scatter, ``3 (W-1)/W`` times the parameters in
  the compute dtype, on every micro-batch; grad-op gathers once (``2 (W-1)/W``); hybrid does the full-shard
  traffic inside a node and all-reduces the shard's gradients across nodes.

Each collective also pays a fixed latency, and each FSDP unit some kernels around its gather and scatter,
which is why DDP wins for models whose replica fits. A share ``overlap`` of the compute time hides
communication (bucketed all-reduce, prefetched all-gather).
Elementwise work (norms, GELU, softmax, dropout, the loss) is memory-bound: each kept activation is written in
forward, read in backward and has a gradient written and read, so ``4x`` the activation bytes (more with
checkpointing's second forward) move through memory at the device's bandwidth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lit_llm.planning.choice import PlanChoice
from lit_llm.planning.memory import Attention, activation_bytes
from lit_llm.planning.params import (
    Task,
    count_parameters,
    lora_parameters,
    lora_targets,
    matmul_parameters,
    parameter_tensors,
)
from lit_llm.planning.presets import HardwareSpec, ModelDims

__all__ = ["StepTime", "flops_per_token", "estimate_step_time", "OVERLAP"]

OVERLAP = 0.7  # share of compute that hides communication
_COLLECTIVE_LATENCY_US = 30.0  # fixed cost of one NCCL collective (launch, sync), whatever its size
_DDP_BUCKET_BYTES = 25 * 2**20  # DDP's default bucket_cap_mb
_FSDP_KERNELS_PER_UNIT = 20  # flatten/unflatten, casts and copies around each unit's gather and scatter
_KERNELS_PER_BLOCK = 60  # forward + backward kernels of one transformer block (HF eager PyTorch)
_KERNELS_PER_TENSOR = 8  # optimizer-step kernels per parameter tensor (bitsandbytes' AdamW8bit loops over tensors)
_FUSED_KERNELS = 5  # torch's fused AdamW: one op call on a CPU; on CUDA a launch per chunk of tensors (negligible)


@dataclass(frozen=True)
class StepTime:
    """Seconds per optimizer step, split into compute, overheads and exposed communication."""

    compute_s: float
    memory_s: float
    overhead_s: float
    comm_s: float
    comm_bytes: float
    offload_s: float
    step_s: float
    flops: float


def flops_per_token(
    dims: ModelDims, task: Task, seq: int, checkpointing: bool = False, adapter: str = "none", lora_rank: int = 8
) -> float:
    """Training FLOPs per token: ``6N + 12*L*s*h``, blocks x4/3 with full activation checkpointing.

    Under LoRA / QLoRA the frozen weights need no weight gradient, so they cost ``4N`` (forward and the input
    gradient) and the adapters ``6 r (n_in + n_out)`` each.

    Example::
        flops_per_token(MODEL_PRESETS["gpt2"], "clm", 1024)  # about 1.0e9
    """
    n = matmul_parameters(dims, task)
    head = dims.vocab * dims.hidden if task in ("mlm", "clm") else 0
    per_weight = 6 if adapter == "none" else 4
    blocks: float = per_weight * (n - head) + 12 * dims.num_layers * seq * dims.hidden
    if adapter != "none":
        blocks += 6 * lora_rank * sum(sum(t.shape) for t in lora_targets(parameter_tensors(dims, task)))
    if checkpointing:
        blocks *= 4 / 3
    return float(blocks + per_weight * head)


def _memory_bound_s(
    dims: ModelDims, task: Task, choice: PlanChoice, seq: int, hardware: HardwareSpec, attention: Attention,
    n_trainable: float, n_params: float,
) -> float:
    """Seconds of memory traffic: activations (4x, more with recomputation), LM loss buffers, the optimizer,
    and QLoRA's dequantization of every 4-bit weight in forward and in backward."""
    p = 2 if choice.mixed else 4
    block, outer, _ = activation_bytes(dims, seq, choice.micro_batch, p, attention, task)
    traffic = (4 + (2 if choice.checkpointing else 0)) * (dims.num_layers * block + outer)
    if task in ("mlm", "clm"):
        traffic += 4 * 4 * seq * choice.micro_batch * dims.vocab  # logits, log-softmax and their gradients
    if choice.adapter == "qlora":
        traffic += 2 * (0.5625 + 2 * 2) * matmul_parameters(dims, task)  # read 4-bit, write + read bf16, twice
    # AdamW reads and writes weights, grads and both states (8-bit states: 2 instead of 8 bytes) once a step
    optim_bytes = 2 * (8 + (2 if choice.optimizer_8bit else 8)) * n_trainable / choice.shard_group
    total = choice.accumulation * traffic + (0 if choice.offload else optim_bytes)
    return total / (hardware.memory_gbps * 1e9)


def _kernel_overhead_s(dims: ModelDims, choice: PlanChoice, hardware: HardwareSpec) -> float:
    """Fixed per-kernel costs: the blocks' kernels per micro-batch and the optimizer's per step."""
    n_tensors = 16 * dims.num_layers + 8
    # lit-llm builds torch's AdamW with the fused kernel on CPUs and GPUs (lit_llm.training.optim.use_fused_kernel;
    # Lightning's FSDPStrategy keeps plain parameters with use_orig_params); bitsandbytes loops over tensors
    optim_kernels = _KERNELS_PER_TENSOR * n_tensors if choice.optimizer_8bit else _FUSED_KERNELS
    kernels = _KERNELS_PER_BLOCK * dims.num_layers * (1.25 if choice.checkpointing else 1) * choice.accumulation
    return (kernels + optim_kernels) * hardware.op_overhead_us * 1e-6


def _communication(
    dims: ModelDims, choice: PlanChoice, hardware: HardwareSpec, n_trainable: float, gathered_bytes: float
) -> tuple[float, float, float]:
    """(seconds, bytes, extra kernel overhead seconds) of one optimizer step's collectives.

    ``gathered_bytes`` is what FSDP all-gathers per pass (the weights in their compute dtype, or a frozen base);
    gradients are reduced only for the ``n_trainable`` parameters.
    """
    w = choice.world_size
    nodes = max(1, w // max(1, choice.devices_per_node))
    link = hardware.inter_node_gbps if nodes > 1 else hardware.intra_node_gbps
    comm_bytes = comm = overhead = 0.0
    grad_bytes = 4 * n_trainable
    if w > 1:
        if choice.strategy == "ddp":
            comm_bytes = 2 * (w - 1) / w * grad_bytes
            comm = comm_bytes / (link * 1e9)
        elif choice.strategy in ("fsdp-full", "fsdp-grad-op"):
            passes = 3 if choice.strategy == "fsdp-full" else 2
            comm_bytes = passes * (w - 1) / w * gathered_bytes * choice.accumulation
            comm = comm_bytes / (link * 1e9)
        else:  # hybrid: full-shard traffic on NVLink, then the shard's gradients all-reduced across nodes
            g = min(choice.devices_per_node, w)
            intra = 3 * (g - 1) / g * gathered_bytes * choice.accumulation
            inter = 2 * (nodes - 1) / nodes * grad_bytes / g
            comm_bytes = intra + inter
            comm = intra / (hardware.intra_node_gbps * 1e9) + inter / (hardware.inter_node_gbps * 1e9)
    if w > 1 and choice.strategy == "ddp":
        calls = math.ceil(grad_bytes / _DDP_BUCKET_BYTES)
    elif w > 1 or choice.strategy != "ddp":
        units = dims.num_layers + 1  # one per block plus the root (embeddings, head)
        calls = (3 if choice.strategy != "fsdp-grad-op" else 2) * units * choice.accumulation
        overhead = units * choice.accumulation * _FSDP_KERNELS_PER_UNIT * hardware.op_overhead_us * 1e-6
    else:
        calls = 0
    return comm + calls * _COLLECTIVE_LATENCY_US * 1e-6, comm_bytes, overhead


def _offload_s(choice: PlanChoice, hardware: HardwareSpec, n_params: float) -> float:
    # weights up and gradients down over PCIe each micro-batch, then AdamW on the host (~16 B/param read and
    # written at ~10 GB/s per process)
    if not choice.offload:
        return 0.0
    pcie = max(hardware.pcie_gbps, 1e-3) * 1e9
    p_bytes = 2 if choice.mixed else 4
    return choice.accumulation * p_bytes * 2 * n_params / pcie + 32 * n_params / choice.shard_group / 10e9


def estimate_step_time(
    dims: ModelDims,
    task: Task,
    choice: PlanChoice,
    seq: int,
    hardware: HardwareSpec,
    num_labels: int = 2,
    attention: Attention = "flash",
) -> StepTime:
    """Estimated seconds for one optimizer step (``accumulation`` micro-batches) on every device.

    Raises:
        ValueError: a precision the hardware has no peak for (e.g. bf16 on a T4).

    Example::
        hw = resolve_hardware("A100-80GB")
        t = estimate_step_time(MODEL_PRESETS["bert-base"], "mlm", PlanChoice(micro_batch=32), 128, hw)
    """
    key = {"32-true": "32", "bf16-mixed": "bf16", "16-mixed": "16"}[choice.precision]
    if key not in hardware.peak_tflops:
        raise ValueError(
            f"precision {choice.precision!r} is not supported on {hardware.name} "
            f"(peaks known for: {', '.join(hardware.peak_tflops)}); choose another --precision."
        )
    tokens = seq * choice.micro_batch * choice.accumulation
    flops = tokens * flops_per_token(dims, task, seq, choice.checkpointing, choice.adapter, choice.lora_rank)
    compute = flops / (hardware.peak_tflops[key] * 1e12 * hardware.mfu)
    n_params = float(count_parameters(dims, task, num_labels))
    if choice.adapter == "none":
        n_trainable, gathered = n_params, (2 if choice.mixed else 4) * n_params
    else:
        n_trainable = float(lora_parameters(dims, task, choice.lora_rank, num_labels))
        base = 0.5625 if choice.adapter == "qlora" else (2 if choice.mixed else 4)
        gathered = base * n_params
    memory = _memory_bound_s(dims, task, choice, seq, hardware, attention, n_trainable, n_params)
    overhead = _kernel_overhead_s(dims, choice, hardware)
    comm, comm_bytes, fsdp_overhead = _communication(dims, choice, hardware, n_trainable, gathered)
    exposed = max(0.0, comm - OVERLAP * (compute + memory))
    offload = _offload_s(choice, hardware, n_params)
    step = compute + memory + overhead + fsdp_overhead + exposed + offload
    return StepTime(compute, memory, overhead + fsdp_overhead, exposed, comm_bytes, offload, step, flops)
