"""Model dimensions and hardware specs the planner reasons on: built-in presets, HF configs, explicit numbers.

The planner builds no trainable model: a :class:`ModelDims` is the handful of numbers that set activations and
FLOPs plus the HF config the parameter tensors are read from (on the meta device, see
:mod:`lit_llm.planning.params`), and a :class:`HardwareSpec` the handful that set what fits and how fast it runs.
"""

from __future__ import annotations

import dataclasses
import json
import re
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
    "hardware_for_device",
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
        config_json: the model's own HF config (JSON text with ``model_type``) when it was read from one; the
            parameter tensors are built from it. Without it, :meth:`hf_config_dict` writes one from the numbers.

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
    config_json: str | None = field(default=None, repr=False)

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

    def hf_config_dict(self) -> dict[str, Any]:
        """The HF config (a dict with ``model_type``, as :func:`lit_llm.hf.build_config` reads it).

        The model's own config when it was read from one, else one written from these numbers.

        Example::
            MODEL_PRESETS["gpt2"].hf_config_dict()["n_layer"]  # 12
        """
        if self.config_json is not None:
            return dict(json.loads(self.config_json))
        if self.arch == "gpt2":
            return {"model_type": "gpt2", "n_layer": self.num_layers, "n_embd": self.hidden, "n_head": self.heads,
                    "n_inner": self.ffn, "vocab_size": self.vocab, "n_positions": self.max_positions}
        spec: dict[str, Any] = {
            "model_type": self.model_type or self.arch, "num_hidden_layers": self.num_layers,
            "hidden_size": self.hidden, "num_attention_heads": self.heads, "intermediate_size": self.ffn,
            "vocab_size": self.vocab,
        }
        if self.arch == "llama":
            spec["num_key_value_heads"] = self.kv_heads or self.heads
        else:
            spec["max_position_embeddings"] = self.max_positions
        return spec


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
        "cpu", 32.0, {"32": 1.0, "bf16": 0.01}, mfu=0.5, intra_node_gbps=10.0, inter_node_gbps=1.25,
        host_memory_gib=32.0, pcie_gbps=0.0, op_overhead_us=15.0, memory_gbps=10.0, context_gib=0.0,
        is_gpu=False,
        notes="peak and bandwidth are placeholders (lit-llm plan --hardware cpu --calibrate measures this CPU's); "
        "bf16 is taken at 1/100 of fp32, as measured on a CPU without bf16 hardware (AVX2 only)",
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


def _config_int(config: Any, name: str, default: int | None = None) -> int:
    from lit_llm.hf import CONFIG_ALIASES, config_size

    value = config_size(config, name)
    if value is None:
        if default is not None:
            return default
        raise ValueError(
            f"model_type {getattr(config, 'model_type', None)!r}: its config has none of "
            f"{', '.join(CONFIG_ALIASES[name])}; the "
            "planner needs them. Give explicit dimensions (--layers --hidden --heads --vocab) instead."
        )
    return value


def _arch(config: Any) -> Arch:
    """The activation model a config follows: RMSNorm decoders (Llama, Mistral, Qwen2, Gemma, ...) as ``llama``,
    encoders with a masked-LM head as ``bert``, other decoders (GPT-2, OPT, GPT-Neo, ...) as ``gpt2``."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if hasattr(config, "rms_norm_eps"):
        return "llama"
    return "bert" if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES else "gpt2"


def dims_from_hf_config(config: Any, name: str | None = None) -> ModelDims:
    """Read :class:`ModelDims` from any ``transformers`` config; its parameters come from the config itself.

    Sizes are read under their usual aliases (``hidden_size`` / ``n_embd`` / ``d_model``, ...); the config is kept
    (``config_json``) so that :func:`~lit_llm.planning.params.parameter_tensors` builds the model on the meta
    device and counts its real tensors, whatever the architecture.

    Raises:
        ValueError: a config without a layer count, width, head count or vocabulary size.

    Example::
        dims = dims_from_hf_config(AutoConfig.from_pretrained("path/to/model"))
    """
    from lit_llm.hf import config_probability

    model_type = getattr(config, "model_type", None)
    label = name or getattr(config, "name_or_path", "") or str(model_type)
    hidden = _config_int(config, "hidden_size")
    heads = _config_int(config, "num_heads")
    arch = _arch(config)
    dropout = config_probability(config, "hidden_dropout")
    attention_dropout = config_probability(config, "attention_dropout")
    activation = getattr(config, "hidden_act", getattr(config, "activation_function", "gelu"))
    return ModelDims(
        label, arch, _config_int(config, "num_layers"), hidden, heads,
        _config_int(config, "intermediate_size", default=4 * hidden),
        _config_int(config, "vocab_size"),
        0 if arch == "llama" else _config_int(config, "max_positions", default=0),
        kv_heads=_config_int(config, "num_kv_heads", default=heads),
        activation=str(activation), dropout=float(dropout or 0.0), attention_dropout=float(attention_dropout or 0.0),
        model_type=model_type, config_json=config.to_json_string(use_diff=False),
    )


def _read_config_file(path: Path) -> Any:
    from lit_llm.hf import build_config

    try:
        spec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"model config {str(path)!r} is not readable JSON ({err}); give the config.json that "
                         "save_pretrained() writes.") from None
    if not isinstance(spec, dict) or "model_type" not in spec:
        raise ValueError(f"model config {str(path)!r} has no 'model_type' key: give the config.json that "
                         "save_pretrained() writes (it names the architecture).")
    try:
        return build_config(spec)
    except (ValueError, KeyError) as err:
        raise ValueError(f"model config {str(path)!r}: transformers cannot build it ({err}).") from None


def resolve_model(spec: str | ModelDims) -> ModelDims:
    """A preset name, an HF model directory, a ``config.json`` file or a hub id, or dims as they are.

    Anything ``transformers`` can build works: the parameters are counted from the config itself (see
    :func:`dims_from_hf_config`).

    Raises:
        ValueError: an unknown name that is neither a preset nor a readable config (the message lists presets).

    Example::
        resolve_model("bert-base").num_layers  # 12
        resolve_model("path/to/checkpoint/config.json")
    """
    if isinstance(spec, ModelDims):
        return spec
    if spec in MODEL_PRESETS:
        return MODEL_PRESETS[spec]
    path = Path(spec).expanduser()
    if path.is_file():
        return dims_from_hf_config(_read_config_file(path), name=spec)
    from transformers import AutoConfig

    from lit_llm.hf import trust_remote_code

    try:
        config = AutoConfig.from_pretrained(spec, trust_remote_code=trust_remote_code())
    except Exception as err:  # noqa: BLE001 - any failure means "not a config we can read"
        where = "directory has no readable config.json" if path.is_dir() else "not found"
        raise _unknown(
            "model", spec, MODEL_PRESETS,
            f"It is also no HF config ({where}: {type(err).__name__}). Give a preset, a directory saved with "
            "save_pretrained(), its config.json, or explicit dimensions.",
        ) from None
    return dims_from_hf_config(config, name=spec)


def hardware_for_device(device_name: str) -> HardwareSpec | None:
    """The preset whose name is in ``device_name`` (``torch.cuda.get_device_name()``), e.g. ``NVIDIA H200``.

    Each ``-``-separated part of a preset's name must appear as a whole word (``A100-80GB`` matches
    ``NVIDIA A100-SXM4-80GB``; ``A10`` does not match an A100). None when no preset matches.

    Example::
        hardware_for_device("NVIDIA H200").peak_tflops["bf16"]  # 989.0
    """
    name = device_name.lower()
    for key, spec in sorted(HARDWARE_PRESETS.items(), key=lambda kv: -len(kv[0])):
        if key != "cpu" and all(re.search(rf"(?<![a-z0-9]){re.escape(part)}(?![a-z0-9])", name)
                                for part in key.lower().split("-")):
            return spec
    return None


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
