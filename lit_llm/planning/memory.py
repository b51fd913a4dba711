"""Per-device memory of one training step: weights, gradients, optimizer states, activations, buffers.

Activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
sec. 4.1), per layer ``sbh(34 + 5as/h)`` bytes in 16-bit with dropout, written here tensor by tensor so that
the same sum also holds in fp32, without dropout, with flash attention (no ``s*s`` term) and for HF's GPT-2
``gelu_new`` (a Python tanh formula that keeps five ``s*b*ffn`` tensors instead of two).

The peak is not the sum of the parts: gradients appear while activations are freed during backward. Both
change linearly layer by layer, so the peak is at one of three moments, and we take the largest:

- start of backward: every activation (with checkpointing: the block inputs, then one recomputed block once
  the loss buffers are gone) with the largest of the LM head's three ``s*b*V`` fp32 buffers (log-softmax
  output, its gradient, the logits' gradient) and, once they are freed, the logits' gradient with the tied
  embedding's gradient;
- end of backward: every gradient plus the embedding backward's ``V*h`` buffer;
- optimizer step: every gradient plus the optimizer's temporaries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, NamedTuple

from lit_llm.planning.choice import PlanChoice
from lit_llm.planning.params import ParamTensor, Task, lora_targets, parameter_tensors
from lit_llm.planning.presets import GIB, HardwareSpec, ModelDims

__all__ = ["Attention", "MemoryEstimate", "activation_bytes", "estimate_memory", "accelerate_estimate"]

Attention = Literal["flash", "eager"]
_BNB_MIN_8BIT_SIZE = 4096  # bitsandbytes keeps 32-bit state for smaller tensors (min_8bit_size)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device; ``peak`` is what must fit (see the module docstring for why it is not the sum).

    ``host`` is CPU memory per node needed by offload (0 without offload). ``tensor_peak`` is the peak of live
    tensor bytes alone, without the GPU runtime context and allocator fragmentation that ``peak`` adds: what
    ``torch.cuda.max_memory_allocated`` measures.
    """

    weights: float
    gradients: float
    optimizer: float
    activations: float
    temporary: float
    peak: float
    host: float = 0.0
    tensor_peak: float = 0.0

    def gib(self) -> dict[str, float]:
        return {key: round(value / GIB, 3) for key, value in asdict(self).items()}


def _act_tensors_ffn(dims: ModelDims) -> int:
    # How many s*b*ffn tensors autograd keeps in the MLP: GELU keeps its input, fc2 its input (GELU's output);
    # HF's gelu_new keeps x, tanh(.), 0.5x and 1+tanh(.) plus fc2's input; SwiGLU keeps gate, up, silu, product.
    if dims.arch == "llama":
        return 4
    return 5 if dims.activation in ("gelu_new", "gelu_fast") else 2


def activation_bytes(
    dims: ModelDims,
    seq: int,
    micro_batch: int,
    bytes_per_value: int,
    attention: Attention = "flash",
    task: Task = "clm",
    mask_bytes: int = 1,
) -> tuple[float, float, float]:
    """Bytes autograd keeps for backward: (one block, embeddings + head, one block's checkpointed input).

    Args:
        dims: the model.
        seq: sequence length ``s``.
        micro_batch: sequences ``b``.
        bytes_per_value: 2 in 16-bit (mixed precision), 4 in fp32.
        attention: ``flash`` (SDPA/FlashAttention: no ``s*s`` matrix kept) or ``eager`` (softmax kept).
        task: ``mlm`` adds BERT's prediction head (dense, GELU, LayerNorm: four ``s*b*h`` tensors).
        mask_bytes: bytes per dropout-mask element: 1 where torch has a fused dropout kernel (CUDA keeps a bool
            mask), ``bytes_per_value`` on CPU (its dropout multiplies by a saved noise tensor of the input dtype).

    Example::
        block, outer, ckpt = activation_bytes(MODEL_PRESETS["bert-base"], 512, 8, 2, "eager")
    """
    s, b, h, a, f, p = seq, micro_batch, dims.hidden, dims.heads, dims.ffn, bytes_per_value
    sbh, sbf = s * b * h, s * b * f
    mask = mask_bytes if dims.dropout > 0 else 0  # nothing is kept when p == 0
    if dims.arch == "llama":
        # two RMSNorms keep x and x_normed; rotary keeps q, rotate_half(q), q_rot (and the same for k); v
        per_sbh = 2 + 7 + 2
    else:
        # block input (read by Q/K/V or ln_1+c_attn), Q, K, V, LN inputs, MLP input; BERT and GPT-2 keep 7
        per_sbh = 7
    block = p * sbh * per_sbh + 2 * mask * sbh + p * sbf * _act_tensors_ffn(dims)
    if attention == "eager":
        attn_drop = dims.attention_dropout > 0
        block += a * s * s * b * (p * (2 if attn_drop else 1) + (mask_bytes if attn_drop else 0))
        block += p * sbh  # the heads merged back (.transpose().contiguous()) for the output projection
    else:
        block += 2 * p * sbh + 4 * b * a * s  # SDPA's output, the merged copy, log-sum-exp (fp32)
    block += 2 * 8 * s * b  # LayerNorm mean and rstd (fp32)

    outer = mask * sbh + 8 * s * b  # embedding dropout mask, token ids
    if dims.arch == "bert":
        outer += p * sbh  # embedding LayerNorm input
        if task == "mlm":
            outer += 4 * p * sbh  # head: dense input, GELU input, LayerNorm input, decoder input
    else:
        outer += p * sbh * 2  # final norm input and output (read by the head)
    return float(block), float(outer), float(p * sbh)


def _optimizer_bytes(numels: list[int], optimizer_8bit: bool) -> float:
    if not optimizer_8bit:
        return 8.0 * sum(numels)  # AdamW: exp_avg and exp_avg_sq in fp32
    # AdamW8bit: two uint8 states with one fp32 absmax per 256-value block; small tensors stay 32-bit
    return sum(2.0 * n + 8.0 * ((n + 255) // 256) if n >= _BNB_MIN_8BIT_SIZE else 8.0 * n for n in numels)


_NF4_BYTES = 0.5 + 4 / 64  # bitsandbytes 4-bit: two values a byte plus one fp32 absmax per block of 64


@dataclass(frozen=True)
class _Params:
    """What the memory model needs from the parameter tensors under one choice.

    ``trainable`` are the tensors the optimizer updates (all of them, or the LoRA adapters and a classification
    head); ``frozen_bytes`` the base weights LoRA / QLoRA keep without gradients; ``*_unit`` one FSDP unit (a
    block, or the embeddings and heads outside the blocks) in parameters or bytes.
    """

    n_params: float
    trainable: list[int]
    frozen_bytes: float
    block_unit: float
    outer_unit: float
    block_frozen_bytes: float
    outer_frozen_bytes: float
    dequant_bytes: float  # QLoRA: the largest weight dequantized to bf16 for its matmul

    @property
    def n_trainable(self) -> float:
        return float(sum(self.trainable))


def _params(dims: ModelDims, task: Task, choice: PlanChoice, num_labels: int) -> _Params:
    tensors = parameter_tensors(dims, task, num_labels)
    n_params = float(sum(t.numel for t in tensors))
    if choice.adapter == "none":
        block = float(sum(t.numel for t in tensors if t.layer == 0))
        return _Params(n_params, [t.numel for t in tensors], 0.0, block, n_params - dims.num_layers * block,
                       0.0, 0.0, 0.0)
    targets = lora_targets(tensors)
    r = choice.lora_rank
    trainable = [r * n for t in targets for n in t.shape]  # A: (r, n_in), B: (n_out, r)
    head = [t for t in tensors if t.head and task == "classification"]
    trainable += [t.numel for t in head]
    target_names = {t.name for t in targets}
    base_bytes = 2 if choice.mixed else 4  # the frozen base in the compute dtype

    def frozen(t: ParamTensor) -> float:
        if choice.adapter == "qlora":
            return t.numel * (_NF4_BYTES if t.name in target_names else 2.0)  # non-Linear weights in bf16
        return float(t.numel * base_bytes)

    head_names = {t.name for t in head}
    frozen_tensors = [t for t in tensors if t.name not in head_names]
    frozen_total = sum(frozen(t) for t in frozen_tensors)
    block_frozen = sum(frozen(t) for t in frozen_tensors if t.layer == 0)
    block_train = float(sum(r * n for t in targets if t.layer == 0 for n in t.shape))
    dequant = 2.0 * max(t.numel for t in targets) if choice.adapter == "qlora" else 0.0
    return _Params(
        n_params, trainable, frozen_total, block_train, float(sum(trainable)) - dims.num_layers * block_train,
        block_frozen, frozen_total - dims.num_layers * block_frozen, dequant,
    )


def _held_state(params: _Params, choice: PlanChoice) -> tuple[float, float, float, float]:
    """(weights, gradients, optimizer states, host bytes) each device keeps between steps.

    Master weights are fp32 in every precision Lightning offers; FSDP full / hybrid shard them, every FSDP
    variant shards gradients and optimizer states; offload moves all three to the host.
    """
    sharded_w = choice.strategy in ("fsdp-full", "fsdp-hybrid")
    weights = (params.frozen_bytes + 4 * params.n_trainable) / (choice.shard_group if sharded_w else 1)
    grads = 4 * params.n_trainable / choice.shard_divisor
    optim = _optimizer_bytes(params.trainable, choice.optimizer_8bit) / choice.shard_divisor
    if not choice.offload:
        return weights, grads, optim, 0.0
    return 0.0, 0.0, 0.0, (weights + grads + optim) * min(choice.devices_per_node, choice.world_size)


def _working_weights(params: _Params, choice: PlanChoice, p: int) -> float:
    """Weights materialized for forward and backward beyond the held ones: casts and FSDP gathers."""
    if choice.adapter != "none":
        # the frozen base is stored in its compute form; FSDP gathers it like any weight
        if choice.strategy == "ddp":
            return params.dequant_bytes
        if choice.strategy == "fsdp-grad-op":
            return params.frozen_bytes + params.dequant_bytes
        return 2 * params.block_frozen_bytes + params.outer_frozen_bytes + params.dequant_bytes
    if choice.strategy == "ddp":
        return 2 * params.n_params if choice.mixed else 0.0  # autocast caches a 16-bit copy of every weight
    if choice.strategy == "fsdp-grad-op":
        return p * params.n_params  # gathered after forward, kept through backward (ZeRO-2)
    # one block gathered plus the next one prefetched, and the unsharded embeddings/head
    return p * (2 * params.block_unit + params.outer_unit)


def _stored_activations(
    dims: ModelDims, task: Task, choice: PlanChoice, seq: int, hardware: HardwareSpec, attention: Attention
) -> tuple[float, float]:
    """(activations kept through the forward, the block recomputed during backward under checkpointing)."""
    p = 2 if choice.mixed else 4
    block, outer, ckpt_input = activation_bytes(
        dims, seq, choice.micro_batch, p, attention, task, mask_bytes=1 if hardware.is_gpu else p
    )
    if choice.adapter != "none":
        # each adapted weight keeps its (s, b, r) down-projection for the up-projection's gradient
        n_targets = len([t for t in lora_targets(parameter_tensors(dims, task)) if t.layer == 0])
        block += n_targets * seq * choice.micro_batch * choice.lora_rank * p
    if choice.checkpointing:
        return dims.num_layers * ckpt_input + outer, block  # block inputs; the last block recomputed
    return dims.num_layers * block + outer, 0.0


class _Temporaries(NamedTuple):
    lm: bool
    sbv: float  # sequence x batch x vocabulary: one fp32 LM-head buffer has 4 * sbv bytes
    head_loss: float
    embed_grad: float
    buckets: float
    full_grad_unit: float
    step_temp: float


def _temporaries(
    params: _Params, dims: ModelDims, task: Task, choice: PlanChoice, seq: int, hardware: HardwareSpec
) -> _Temporaries:
    """Buffers that live for part of a step: the LM loss, the embedding gradient, DDP buckets, FSDP's unsharded
    gradients of one unit, the optimizer's per-step temporaries."""
    lm = task in ("mlm", "clm")
    sbv = float(seq * choice.micro_batch * dims.vocab)
    head_loss = 3 * 4 * sbv if lm else 0.0  # log_softmax out, its grad, logits' grad
    # the word embedding's gradient, made by the head/embedding (a frozen embedding has none)
    embed_grad = 4.0 * dims.vocab * dims.hidden if choice.adapter == "none" else 0.0
    if choice.strategy == "ddp":
        # Lightning's DDP copies gradients into flat buckets (gradient_as_bucket_view=False)
        buckets = 4 * params.n_trainable if choice.world_size > 1 else 0.0
        full_grad_unit = 0.0
    else:
        buckets = 0.0
        full_grad_unit = 4 * max(params.block_unit, params.outer_unit)  # a unit's grads before reduce-scatter
    if choice.offload:
        step_temp = 0.0  # the optimizer runs on the host
    elif choice.optimizer_8bit:
        # bitsandbytes updates one tensor at a time; on a CPU its 8-bit step allocates 20 bytes per element of the
        # tensor it updates (measured, tests/planning/test_plan_memory.py); its CUDA kernel is not measured here
        step_temp = (20.0 if not hardware.is_gpu else 8.0) * float(max(params.trainable))
    else:
        step_temp = 0.0  # lit-llm's AdamW runs torch's fused kernel, which updates in place (no sqrt buffer)
    return _Temporaries(lm, sbv, head_loss, embed_grad, buckets, full_grad_unit, step_temp)


def estimate_memory(
    dims: ModelDims,
    task: Task,
    choice: PlanChoice,
    seq: int,
    hardware: HardwareSpec,
    attention: Attention = "flash",
    num_labels: int = 2,
) -> MemoryEstimate:
    """Peak memory of one device in one steady-state training step of ``choice``.

    Under LoRA / QLoRA only the adapters (and a classification head) have gradients and optimizer states; the
    frozen base is held in bf16 (16-bit precisions) or fp32, or in 4-bit NF4 for QLoRA; the embeddings get no
    gradient, so the LM head makes no ``V*h`` gradient buffer.

    Args:
        dims: the model.
        task: ``mlm``, ``clm`` or ``classification`` (LM tasks add ``s*b*V`` fp32 loss buffers).
        choice: strategy, precision, checkpointing, optimizer, offload, adapter, micro-batch, world size.
        seq: sequence length.
        hardware: the device (its runtime context is added on GPUs).
        attention: ``flash`` or ``eager``, see :func:`activation_bytes`.
        num_labels: classes of a classification head.

    Example::
        choice = PlanChoice(micro_batch=8)
        est = estimate_memory(MODEL_PRESETS["bert-base"], "mlm", choice, 512, resolve_hardware("A10"))
        est.peak / 2**30  # GiB
    """
    params = _params(dims, task, choice, num_labels)
    weights, grads, optim, host = _held_state(params, choice)
    working = _working_weights(params, choice, 2 if choice.mixed else 4)
    stored, recompute = _stored_activations(dims, task, choice, seq, hardware, attention)

    t = _temporaries(params, dims, task, choice, seq, hardware)
    lm, sbv, head_loss, embed_grad = t.lm, t.sbv, t.head_loss, t.embed_grad
    buckets, full_grad_unit, step_temp = t.buckets, t.full_grad_unit, t.step_temp
    head_grad = embed_grad if lm else 0.0
    # Backward frees each node's saved tensors once it ran: first the loss (log-softmax output, its gradient,
    # the logits' gradient), then the head matmul (the logits' gradient and the tied embedding's gradient),
    # then, with checkpointing, the last block recomputed next to that gradient.
    bwd_start = full_grad_unit + stored + max(
        head_loss, (4 * sbv if lm else 0.0) + head_grad, recompute + head_grad
    )
    bwd_end = grads + embed_grad / choice.shard_divisor + full_grad_unit
    step = grads + step_temp
    context = hardware.context_gib * GIB if hardware.is_gpu else 0.0
    tensor_peak = weights + optim + buckets + max(working + bwd_start, working + bwd_end, step)
    temporary = context + buckets + working + max(head_loss + embed_grad + full_grad_unit, step_temp)
    peak = context + tensor_peak * (1.05 if hardware.is_gpu else 1.0)  # caching-allocator fragmentation
    return MemoryEstimate(weights, grads, optim, stored + recompute, temporary, peak, host, tensor_peak)


def accelerate_estimate(dims: ModelDims, task: Task, num_labels: int = 2) -> float:
    """What ``accelerate estimate-memory`` reports for fp32 AdamW training: weights + grads + Adam, 16 B/param.

    It counts no activations and no buffers; it is shown next to our estimate for comparison.
    """
    return 16.0 * sum(t.numel for t in parameter_tensors(dims, task, num_labels))
