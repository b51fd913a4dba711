"""Model dimensions and hardware specs the planner reasons on: built-in presets, HF configs, explicit numbers.

The planner never builds a model: a :class:`ModelDims` is the handful of numbers that set memory and FLOPs,
and a :class:`HardwareSpec` the handful that set what fits and how fast it runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "Arch",
    "ModelDims",
    "HardwareSpec",
    "MODEL_PRESETS",
    "HARDWARE_PRESETS",
    "GIB",
    "resolve_model",
    "resolve_hardware",
    "dims_from_hf_config",
]

GIB = 1024**3
Arch = Literal["bert", "gpt2", "llama"]
ARCHES: tuple[str, ...] = ("bert", "gpt2", "llama")


@dataclass(frozen=True)
class ModelDims:
    """The numbers of a transformer that set its memory and compute.

    Args:
        name: a label for tables.
        arch: ``bert`` (post-LN encoder, tied MLM decoder), ``gpt2`` (pre-LN decoder, tied head) or ``llama``
            (RMSNorm, SwiGLU, rotary, untied head).
        num_layers: transformer blocks.
        hidden: model width ``h``.
        heads: attention heads ``a``.
        ffn: MLP inner width (``4h`` for BERT/GPT-2).
        vocab: vocabulary size ``V``.
        max_positions: learned position embeddings (0 for rotary).
        kv_heads: key/value heads (grouped-query attention); defaults to ``heads``.
        activation: the HF activation name; ``gelu_new`` (GPT-2) is a Python tanh formula that keeps more tensors.
        dropout: hidden dropout probability (dropout keeps a 1-byte mask per element).
        attention_dropout: dropout on attention probabilities.
        model_type: the HF ``model_type`` (default: ``arch``), for the emitted config.
        hub_id: where a preset's weights live on the hub, for the emitted config.

    Raises:
        ValueError: a non-positive size, or ``hidden`` not divisible by ``heads``.

    Example::
        dims = ModelDims("tiny", "bert", num_layers=2, hidden=64, heads=2, ffn=256, vocab=1000, max_positions=128)
    """

    name: str
    arch: Arch
    num_layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int = 512
    kv_heads: int | None = None
    activation: str = "gelu"
    dropout: float = 0.1
    attention_dropout: float = 0.1
    model_type: str | None = None
    hub_id: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.arch not in ARCHES:
            raise ValueError(f"ModelDims(arch={self.arch!r}): choose one of {', '.join(ARCHES)}.")
        for key in ("num_layers", "hidden", "heads", "ffn", "vocab"):
            if getattr(self, key) <= 0:
                raise ValueError(f"ModelDims({key}={getattr(self, key)!r}): must be a positive integer.")
        if self.hidden % self.heads:
            raise ValueError(
                f"ModelDims(hidden={self.hidden}, heads={self.heads}): hidden must be divisible by heads."
            )

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return (self.kv_heads or self.heads) * self.head_dim

    def replace(self, **changes: Any) -> ModelDims:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class HardwareSpec:
    """One accelerator (or the CPU) as the planner sees it.

    Args:
        name: a label for tables.
        memory_gib: memory per device in GiB.
        peak_tflops: dense peak TFLOP/s per precision (``32``, ``bf16``, ``16``); a precision that is missing is
            not supported.
        mfu: the fraction of peak a well-tuned transformer step reaches (model FLOPs utilization).
        intra_node_gbps: per-device bus bandwidth between devices of a node, GB/s (NVLink, PCIe).
        inter_node_gbps: per-device bandwidth between nodes, GB/s (InfiniBand, Ethernet).
        host_memory_gib: CPU memory per node, for CPU offload.
        pcie_gbps: host-device bandwidth for offload, GB/s.
        op_overhead_us: fixed cost per kernel (launch, Python); it dominates tiny models.
        memory_gbps: device memory bandwidth, GB/s, for the memory-bound (elementwise, softmax) share.
        context_gib: memory the runtime takes before any tensor (CUDA context, allocator slack).
        is_gpu: Lightning accelerator ``gpu`` rather than ``cpu``.

    Example::
        hw = HardwareSpec("my-gpu", memory_gib=48, peak_tflops={"32": 40.0, "bf16": 180.0}, mfu=0.4)
    """

    name: str
    memory_gib: float
    peak_tflops: dict[str, float]
    mfu: float = 0.4
    intra_node_gbps: float = 25.0
    inter_node_gbps: float = 12.5
    host_memory_gib: float = 256.0
    pcie_gbps: float = 12.0
    op_overhead_us: float = 10.0
    memory_gbps: float = 1000.0
    context_gib: float = 0.8
    is_gpu: bool = True
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.memory_gib <= 0:
            raise ValueError(f"HardwareSpec(memory_gib={self.memory_gib!r}): must be > 0 GiB.")
        if not 0 < self.mfu <= 1:
            raise ValueError(f"HardwareSpec(mfu={self.mfu!r}): must be in (0, 1], e.g. 0.4.")
        if "32" not in self.peak_tflops or any(v <= 0 for v in self.peak_tflops.values()):
            raise ValueError(
                f"HardwareSpec(peak_tflops={self.peak_tflops!r}): needs a positive '32' entry (and optionally "
                "'bf16', '16')."
            )

    def replace(self, **changes: Any) -> HardwareSpec:
        return dataclasses.replace(self, **changes)


def _bert(name: str, layers: int, hidden: int, heads: int, hub_id: str) -> ModelDims:
    return ModelDims(name, "bert", layers, hidden, heads, 4 * hidden, 30522, max_positions=512, hub_id=hub_id)


def _gpt2(name: str, layers: int, hidden: int, heads: int, hub_id: str) -> ModelDims:
    return ModelDims(name, "gpt2", layers, hidden, heads, 4 * hidden, 50257, 1024, activation="gelu_new",
                     hub_id=hub_id)


MODEL_PRESETS: dict[str, ModelDims] = {
    "bert-base": _bert("bert-base", 12, 768, 12, "google-bert/bert-base-uncased"),
    "bert-large": _bert("bert-large", 24, 1024, 16, "google-bert/bert-large-uncased"),
    "roberta-base": ModelDims("roberta-base", "bert", 12, 768, 12, 3072, 50265, max_positions=514,
                              model_type="roberta", hub_id="FacebookAI/roberta-base"),
    "roberta-large": ModelDims("roberta-large", "bert", 24, 1024, 16, 4096, 50265, max_positions=514,
                               model_type="roberta", hub_id="FacebookAI/roberta-large"),
    "minilm-l6": _bert("minilm-l6", 6, 384, 12, "sentence-transformers/all-MiniLM-L6-v2"),
    "gpt2": _gpt2("gpt2", 12, 768, 12, "openai-community/gpt2"),
    "gpt2-medium": _gpt2("gpt2-medium", 24, 1024, 16, "openai-community/gpt2-medium"),
    "gpt2-large": _gpt2("gpt2-large", 36, 1280, 20, "openai-community/gpt2-large"),
    "gpt2-xl": _gpt2("gpt2-xl", 48, 1600, 25, "openai-community/gpt2-xl"),
    # Llama-2-7B: 32 x 4096, SwiGLU 11008, 32k vocab, rotary (no position table), no dropout.
    "llama-7b": ModelDims(
        "llama-7b", "llama", 32, 4096, 32, 11008, 32000, 0, activation="silu", dropout=0.0, attention_dropout=0.0,
        hub_id="meta-llama/Llama-2-7b-hf",
    ),
}

# Dense (no sparsity) peaks from the vendors' data sheets; "32" is plain FP32 (Lightning's default keeps TF32
# off unless torch.set_float32_matmul_precision is lowered). Bandwidths are achievable bus bandwidths, not the
# marketing bidirectional totals.
HARDWARE_PRESETS: dict[str, HardwareSpec] = {
    "cpu": HardwareSpec(
        "cpu", 32.0, {"32": 1.0, "bf16": 0.5}, mfu=0.5, intra_node_gbps=10.0, inter_node_gbps=1.25,
        host_memory_gib=32.0, pcie_gbps=0.0, op_overhead_us=15.0, memory_gbps=10.0, context_gib=0.0,
        is_gpu=False,
        notes="peak and bandwidth are placeholders (pass --peak_tflops_fp32, scripts/measure_planner.py measures "
        "them); bf16 is taken at half the fp32 rate (no AMX)",
    ),
    "T4": HardwareSpec(
        "T4", 15.0, {"32": 8.1, "16": 65.0}, mfu=0.3, intra_node_gbps=10.0, inter_node_gbps=6.0,
        host_memory_gib=64.0, pcie_gbps=12.0, op_overhead_us=10.0, memory_gbps=320.0, notes="no bf16",
    ),
    "A10": HardwareSpec(
        "A10", 22.0, {"32": 31.2, "bf16": 125.0, "16": 125.0}, mfu=0.35, intra_node_gbps=20.0,
        inter_node_gbps=12.5, host_memory_gib=128.0, pcie_gbps=24.0, memory_gbps=600.0,
    ),
    "A100-40GB": HardwareSpec(
        "A100-40GB", 39.4, {"32": 19.5, "bf16": 312.0, "16": 312.0}, mfu=0.45, intra_node_gbps=240.0,
        inter_node_gbps=25.0, host_memory_gib=512.0, pcie_gbps=24.0, memory_gbps=1555.0,
    ),
    "A100-80GB": HardwareSpec(
        "A100-80GB", 79.1, {"32": 19.5, "bf16": 312.0, "16": 312.0}, mfu=0.45, intra_node_gbps=240.0,
        inter_node_gbps=25.0, host_memory_gib=1024.0, pcie_gbps=24.0, memory_gbps=2039.0,
    ),
    "H100": HardwareSpec(
        "H100", 79.1, {"32": 67.0, "bf16": 989.0, "16": 989.0}, mfu=0.40, intra_node_gbps=360.0,
        inter_node_gbps=50.0, host_memory_gib=1024.0, pcie_gbps=50.0, memory_gbps=3350.0,
    ),
    "H200": HardwareSpec(
        "H200", 139.8, {"32": 67.0, "bf16": 989.0, "16": 989.0}, mfu=0.40, intra_node_gbps=360.0,
        inter_node_gbps=50.0, host_memory_gib=2048.0, pcie_gbps=50.0, memory_gbps=4800.0,
    ),
}


def _unknown(kind: str, name: str, known: dict[str, Any], hint: str) -> ValueError:
    return ValueError(f"unknown {kind} preset {name!r}; presets: {', '.join(known)}. {hint}")


def dims_from_hf_config(config: Any, name: str | None = None) -> ModelDims:
    """Map a ``transformers`` config (BERT/RoBERTa/ELECTRA, GPT-2, Llama/Mistral/Qwen2) to :class:`ModelDims`.

    Raises:
        ValueError: a ``model_type`` the planner has no memory model for.

    Example::
        dims = dims_from_hf_config(AutoConfig.from_pretrained("path/to/model"))
    """
    model_type = getattr(config, "model_type", None)
    label = name or getattr(config, "name_or_path", "") or str(model_type)
    if model_type in ("bert", "roberta", "electra", "xlm-roberta", "camembert"):
        return ModelDims(
            label, "bert", config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
            config.intermediate_size, config.vocab_size, config.max_position_embeddings,
            activation=str(config.hidden_act), dropout=float(config.hidden_dropout_prob),
            attention_dropout=float(config.attention_probs_dropout_prob), model_type=model_type,
        )
    if model_type == "gpt2":
        return ModelDims(
            label, "gpt2", config.n_layer, config.n_embd, config.n_head, config.n_inner or 4 * config.n_embd,
            config.vocab_size, config.n_positions, activation=str(config.activation_function),
            dropout=float(config.resid_pdrop), attention_dropout=float(config.attn_pdrop), model_type=model_type,
        )
    if model_type in ("llama", "mistral", "qwen2"):
        return ModelDims(
            label, "llama", config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
            config.intermediate_size, config.vocab_size, 0, kv_heads=config.num_key_value_heads,
            activation=str(config.hidden_act), dropout=0.0, attention_dropout=float(config.attention_dropout),
            model_type=model_type,
        )
    raise ValueError(
        f"model_type {model_type!r} ({label}) has no memory model in the planner; supported: bert, roberta, "
        "electra, gpt2, llama, mistral, qwen2. Give explicit dimensions (--layers --hidden --heads --vocab) instead."
    )


def resolve_model(spec: str | ModelDims) -> ModelDims:
    """A preset name, an HF config directory or hub id (read with ``AutoConfig``), or dims as they are.

    Raises:
        ValueError: an unknown name that is neither a preset nor a readable config (the message lists presets).

    Example::
        resolve_model("bert-base").num_layers  # 12
    """
    if isinstance(spec, ModelDims):
        return spec
    if spec in MODEL_PRESETS:
        return MODEL_PRESETS[spec]
    from transformers import AutoConfig

    from lit_llm.hf import trust_remote_code

    try:
        config = AutoConfig.from_pretrained(spec, trust_remote_code=trust_remote_code())
    except Exception as err:  # noqa: BLE001 - any failure means "not a config we can read"
        where = "directory has no readable config.json" if Path(spec).expanduser().is_dir() else "not found"
        raise _unknown(
            "model", spec, MODEL_PRESETS,
            f"It is also no HF config ({where}: {type(err).__name__}). Give a preset, a directory saved with "
            "save_pretrained(), or explicit dimensions.",
        ) from None
    return dims_from_hf_config(config, name=spec)


def resolve_hardware(name: str, **overrides: Any) -> HardwareSpec:
    """A hardware preset (case-insensitive), with fields overridden (``memory_gib=...``, ``peak_tflops=...``).

    Raises:
        ValueError: an unknown preset (the message lists the presets).

    Example::
        resolve_hardware("A100-80GB", inter_node_gbps=50.0)
    """
    by_lower = {key.lower(): key for key in HARDWARE_PRESETS}
    key = by_lower.get(name.lower())
    if key is None:
        raise _unknown(
            "hardware", name, HARDWARE_PRESETS,
            "Or describe it: --memory_gb, --peak_tflops and --bandwidth_gbps with --hardware custom.",
        )
    spec = HARDWARE_PRESETS[key]
    changes = {k: v for k, v in overrides.items() if v is not None}
    return spec.replace(**changes) if changes else spec
