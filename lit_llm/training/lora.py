"""LoRA and QLoRA through ``peft``: low-rank adapters on a frozen (optionally 4-bit NF4) base model.

Method card. LoRA (Hu et al. 2021) freezes the pretrained weights and learns, for chosen Linear layers, a low-rank
update ``W + (alpha / r) * B @ A`` (``A``: ``(r, in)``, ``B``: ``(out, r)``, ``B`` starts at zero so training
starts from the pretrained function). QLoRA (Dettmers et al. 2023) stores the frozen base of those layers in 4-bit
NF4 (bitsandbytes) and trains the adapters in bf16 (here: in the spec's ``compute_dtype``, bf16 or fp32; see
:func:`qlora_compute_dtype` for why a CPU without bf16 hardware computes in fp32). Use it to fine-tune with a
fraction of the trainable parameters and optimizer memory; expect accuracy close to full fine-tuning on
classification, a little lower at small ranks. A newly initialized task head (``classifier`` / ``score``) is
trained in full (peft's ``modules_to_save``), since a random head cannot be adapted by a low-rank update.

These are plain functions (no trainer): :func:`find_lora_targets` picks the layers, :func:`apply_lora` injects
the adapters in place (the model keeps its class and attribute names, so a module's ``training_step`` and
``configure_optimizers`` are unchanged), :func:`save_adapters` writes a directory ``peft.PeftModel.from_pretrained``
loads, and :func:`merge_lora` folds the adapters back into plain Linear layers (4-bit bases dequantized) so
``from_pretrained`` and ``pipeline()`` load the result as an ordinary model.

Example::
    spec = LoraSpec(targets=find_lora_targets(model), rank=8, alpha=16.0, head=find_head(model))
    apply_lora(model, spec)            # only adapters and head require grad now
    ...train...
    save_adapters(model, "export-lora", spec)
    merge_lora(model).save_pretrained("export-merged")
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_llm.compression.low_rank import DEFAULT_PATTERNS
from lit_llm.errors import InvalidArgumentError, UserInputError
from lit_llm.training.dropout import use_fast_dropout

__all__ = [
    "ADAPTER_NAME",
    "LORA_STATE_FORMAT",
    "LoraSpec",
    "QuantizationUnavailableError",
    "apply_lora",
    "base_fingerprint",
    "check_4bit_available",
    "find_head",
    "find_lora_targets",
    "linear_layer_names",
    "lora_state_of",
    "merge_lora",
    "parameter_counts",
    "qlora_compute_dtype",
    "require_peft",
    "save_adapters",
    "trainable_parameter_names",
]

ADAPTER_NAME = "default"  # peft's adapter name; one adapter per model here
LORA_STATE_FORMAT = "lit_llm.lora"  # marks the LoRA callback's checkpoint state, read back by `lit-llm export`
QUANTIZE_CHOICES = ("nf4",)
COMPUTE_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


class QuantizationUnavailableError(RuntimeError, UserInputError):
    """QLoRA was asked for where bitsandbytes 4-bit cannot run; the message says what can."""


@dataclass
class LoraSpec:
    """What defines the adapted model: enough to rebuild it from the base model (kept in the checkpoint).

    Args:
        targets: full names of the Linear layers that get adapters (relative to the adapted model).
        rank: ``r``, the adapters' inner dimension.
        alpha: the update is scaled by ``alpha / rank``.
        dropout: dropout on the adapters' input.
        head: names of modules trained in full and saved with the adapters (a new task head, or a layer the
            pretrained directory lacks, such as a pooler that transformers initializes at random).
        quantize_base: None (LoRA) or ``"nf4"`` (QLoRA: target layers' frozen weights in 4-bit NF4).
        compute_dtype: QLoRA only: the dtype of the 4-bit layers' matmuls and of the adapters, ``"bfloat16"`` or
            ``"float32"``.
    """

    targets: list[str]
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    head: list[str] = field(default_factory=list)
    quantize_base: str | None = None
    compute_dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            problems.append(f"rank={self.rank!r} must be an int >= 1, e.g. 8")
        if not self.alpha > 0:
            problems.append(f"alpha={self.alpha!r} must be > 0, e.g. 2 * rank")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout={self.dropout!r} must be in [0, 1), e.g. 0.05")
        if self.quantize_base is not None and self.quantize_base not in QUANTIZE_CHOICES:
            problems.append(f"quantize_base={self.quantize_base!r} must be None (LoRA) or 'nf4' (QLoRA)")
        if self.compute_dtype not in COMPUTE_DTYPES:
            problems.append(f"compute_dtype={self.compute_dtype!r} must be one of {sorted(COMPUTE_DTYPES)}")
        if problems:
            raise InvalidArgumentError("LoRA: " + "; ".join(problems) + ".")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (a checkpoint that loads with ``weights_only=True``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoraSpec:
        fields = {k: data[k] for k in ("targets", "rank", "alpha", "dropout", "head", "quantize_base")}
        return cls(**fields, compute_dtype=data.get("compute_dtype", "bfloat16"))  # older checkpoints: bf16

    def peft_config(self) -> Any:
        """The ``peft.LoraConfig`` of this spec."""
        require_peft()
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,  # type: ignore[arg-type]  # annotated int, a float scale works the same
            lora_dropout=self.dropout,
            # Exact names, anchored: peft matches a string list by suffix, which could adapt more than chosen.
            target_modules="^(" + "|".join(re.escape(t) for t in self.targets) + ")$",
            modules_to_save=list(self.head) or None,
        )


def require_peft() -> None:
    """peft is an optional dependency (the ``lora`` extra): imported where used, with the install hint."""
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ImportError("LoRA needs the peft package: pip install 'lit-llm[lora]' (or pip install peft)") from None


def linear_layer_names(model: nn.Module) -> list[str]:
    """Names of every ``nn.Linear`` in ``model`` (what a target pattern can match)."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and name]


def find_lora_targets(model: nn.Module, patterns: Iterable[str] | None = None) -> list[str]:
    """The Linear layers to adapt: those whose name matches one of ``patterns`` (regexes, ``re.search``).

    Args:
        model: any module.
        patterns: default: every Linear layer inside the transformer blocks (``...layer.3.``, ``...h.0.``), the
            same rule as pruning and low-rank factorization.

    Raises:
        InvalidArgumentError: a pattern that is not a regex, or patterns matching no Linear layer (the message lists
            the Linear layers that exist).

    Example::
        find_lora_targets(model, [r"attention\\.self\\.(query|value)$"])
    """
    given = list(DEFAULT_PATTERNS if patterns is None else patterns)
    try:
        compiled = [re.compile(p) for p in given]
    except re.error as err:
        raise InvalidArgumentError(f"LoRA patterns={given!r}: {err.pattern!r} is not a regex ({err}).") from None
    linears = linear_layer_names(model)
    targets = [name for name in linears if any(p.search(name) for p in compiled)]
    if not targets:
        shown = ", ".join(linears[:40]) + (f", ... ({len(linears)} in all)" if len(linears) > 40 else "")
        raise InvalidArgumentError(
            f"LoRA patterns={given!r} match no Linear layer of {type(model).__name__}. Its Linear layers are: "
            f"{shown or '(none)'}. Give regexes that match some of these names, e.g. 'attention'."
        )
    return targets


def find_head(model: nn.Module) -> list[str]:
    """The task head of a transformers model: its top-level children outside the base model
    (``model.base_model_prefix``) that hold parameters of their own (a tied LM decoder shares the embeddings', so an
    LM head stays frozen). Empty for a model without ``base_model_prefix``.

    Example::
        find_head(BertForSequenceClassification(config))  # ['classifier']
    """
    prefix = getattr(model, "base_model_prefix", None)
    if not prefix or not hasattr(model, prefix):
        return []
    base_params = {id(p) for p in getattr(model, prefix).parameters()}
    head = []
    for name, child in model.named_children():
        params = list(child.parameters())
        if name != prefix and params and not any(id(p) in base_params for p in params):
            head.append(name)
    return head


def check_4bit_available(device: torch.device | str = "cpu") -> None:
    """Run a tiny NF4 Linear forward on ``device``; raise a clear error when bitsandbytes 4-bit cannot.

    Raises:
        QuantizationUnavailableError: bitsandbytes is missing or its 4-bit kernels do not run on ``device`` (the
            message says what runs instead: LoRA without quantization).
    """
    try:
        import bitsandbytes as bnb
    except ImportError as err:
        reason = f"bitsandbytes is not installed ({err}); pip install bitsandbytes"
    else:
        try:
            layer = _linear4bit(nn.Linear(64, 8), device)
            with torch.no_grad():
                layer(torch.ones(1, 64, device=device))
            return
        except Exception as err:  # noqa: BLE001 - any failure of the kernels means 4-bit cannot run here
            reason = (f"bitsandbytes {bnb.__version__} has no working 4-bit kernel on {device} "
                      f"({type(err).__name__}: {err})")
    raise QuantizationUnavailableError(
        f"LoRA(quantize_base='nf4') needs bitsandbytes 4-bit, which cannot run here: {reason}. What runs: LoRA "
        "without quantization (quantize_base: null) on this device; QLoRA on a CUDA GPU, or on a CPU with a "
        "bitsandbytes release whose CPU backend has 4-bit kernels (0.50.2 has)."
    )


def qlora_compute_dtype(device: torch.device | str) -> str:
    """The dtype QLoRA should compute in on ``device``: ``"bfloat16"`` on CUDA and on a CPU with bf16 matmul
    hardware (AMX or AVX-512 bf16), ``"float32"`` on other CPUs.

    Without bf16 hardware torch runs bf16 matmuls on a slow fallback kernel: on our AVX2 EPYC a NF4 384->1536
    layer's forward and backward on 2,048 tokens took 7.2 s with bf16 compute and 0.2 s with fp32 compute. The
    4-bit storage (the memory QLoRA saves) is the same either way.
    """
    if torch.device(device).type != "cpu":
        return "bfloat16"
    from lit_llm.planning.cpu import local_cpuinfo

    info = local_cpuinfo()
    return "float32" if info is None or info.bf16_unit == "none" else "bfloat16"


def _linear4bit(linear: nn.Linear, device: torch.device | str, compute_dtype: str = "bfloat16") -> nn.Module:
    """``linear`` as a frozen bitsandbytes NF4 Linear (``compute_dtype`` matmuls), quantized on ``device``."""
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(
        linear.in_features, linear.out_features, bias=linear.bias is not None,
        compute_dtype=COMPUTE_DTYPES[compute_dtype],
        quant_type="nf4", device="meta",
    )
    weight = linear.weight.detach().to("cpu", torch.float32)
    layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.detach().to("cpu"), requires_grad=False)
    # On CPUs with AVX512-BF16, bitsandbytes (0.50) repacks a 4-bit weight in place at its first eval-mode forward
    # (validation), after which a training forward fails ("a view of a leaf Variable ... in-place operation"), and
    # it asserts on layers whose out features are not a multiple of 32: keep the portable layout while training.
    layer.support_avx512bf16_for_cpu = False
    return layer.to(device)  # Params4bit quantizes when it is moved


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def base_fingerprint(model: nn.Module, spec: LoraSpec) -> list[float]:
    """``[sum, sum of |x|]`` over the frozen base weights (the head left out), in float64.

    A checkpoint holds only the adapters, so a resume or an export must rebuild the very same base; comparing
    this fingerprint catches a different base (another pretrained model, another random initialization).
    """
    total = absolute = 0.0
    skip = tuple(f"{h}." for h in spec.head)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith(skip) or not param.is_floating_point():
                continue
            value = param.detach().double()
            total += float(value.sum())
            absolute += float(value.abs().sum())
    return [total, absolute]


def apply_lora(model: nn.Module, spec: LoraSpec) -> nn.Module:
    """Inject LoRA adapters into ``model`` in place; only the adapters and the head stay trainable.

    With ``spec.quantize_base="nf4"`` the target layers' frozen weights are first replaced by bitsandbytes NF4 4-bit
    Linear layers computing in ``spec.compute_dtype``, and the adapters are kept in that dtype (QLoRA).

    Args:
        model: any module holding the target Linear layers (e.g. a transformers model).
        spec: targets, rank, alpha, dropout, head, quantization.

    Returns:
        ``model`` itself, adapted.

    Raises:
        InvalidArgumentError: a target that is not a Linear layer of ``model``; a head name that is not a child.
        QuantizationUnavailableError: QLoRA where bitsandbytes 4-bit cannot run.

    Example::
        apply_lora(model, LoraSpec(targets=find_lora_targets(model), rank=8))
    """
    require_peft()
    from peft import inject_adapter_in_model

    linears = set(linear_layer_names(model))
    unknown = [t for t in spec.targets if t not in linears]
    if unknown:
        raise InvalidArgumentError(
            f"LoRA targets {unknown[:5]} are not Linear layers of {type(model).__name__}; they must come from "
            "find_lora_targets on this model (was the checkpoint written for another model?)."
        )
    modules = dict(model.named_modules())
    missing_head = [h for h in spec.head if h not in modules]
    if missing_head:
        raise InvalidArgumentError(
            f"LoRA head={missing_head!r}: no such module in {type(model).__name__} (its children: "
            f"{sorted(dict(model.named_children()))}); give module names such as 'classifier' or 'bert.pooler', "
            "or [] to train no head."
        )
    if spec.quantize_base:
        device = next(model.parameters()).device
        check_4bit_available(device)
        for name in spec.targets:
            layer = _linear4bit(model.get_submodule(name), device, spec.compute_dtype)  # type: ignore[arg-type]
            _set_submodule(model, name, layer)
    for param in model.parameters():
        param.requires_grad_(False)
    inject_adapter_in_model(spec.peft_config(), model, adapter_name=ADAPTER_NAME)
    for name, module in model.named_modules():  # the adapters' input dropout: lit-llm's CPU masks, as our models'
        if name.rsplit(".", 1)[-1] == "lora_dropout":
            use_fast_dropout(module)
    for name, param in model.named_parameters():
        if "lora_" in name or ".modules_to_save." in name:
            param.requires_grad_(True)
            if spec.quantize_base and "lora_" in name:
                param.data = param.data.to(COMPUTE_DTYPES[spec.compute_dtype])
    return model


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameters; a 4-bit weight counts its logical size, not its packed bytes.

    Example::
        trainable, total = parameter_counts(model)
    """
    trainable = total = 0
    for param in model.parameters():
        state = getattr(param, "quant_state", None)
        n = int(state.shape.numel()) if state is not None else param.numel()  # bitsandbytes packs 2 per byte
        total += n
        trainable += n if param.requires_grad else 0
    return trainable, total


def trainable_parameter_names(model: nn.Module, prefix: str = "") -> set[str]:
    """Names (with ``prefix``) of the parameters that require grad: what an adapter checkpoint keeps."""
    return {prefix + name for name, param in model.named_parameters() if param.requires_grad}


def lora_state_of(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The LoRA callback's state in a Lightning checkpoint (``spec``, ``model_attr``, ``base_fingerprint``), or None."""
    for value in (checkpoint.get("callbacks") or {}).values():
        if isinstance(value, dict) and value.get("format") == LORA_STATE_FORMAT:
            return value
    return None


def save_adapters(
    model: nn.Module,
    out_dir: str | Path,
    spec: LoraSpec,
    tokenizer: Any = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the adapters (and head) as ``peft`` does: ``adapter_config.json`` + ``adapter_model.safetensors``.

    ``peft.PeftModel.from_pretrained(base_model, out_dir)`` loads it onto the float base model (for a QLoRA run,
    quantize the base the same way to reproduce training exactly).

    Args:
        model: the adapted model (after :func:`apply_lora`).
        out_dir: a new or empty directory.
        spec: the spec it was adapted with.
        tokenizer: saved alongside when given.
        state_dict: the model's full state when it is sharded (FSDP2 shards gathered).

    Raises:
        FileExistsError: ``out_dir`` already holds files.
    """
    require_peft()
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    from lit_llm.hf import check_export_dir

    out = check_export_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    adapters = get_peft_model_state_dict(model, state_dict=state_dict, adapter_name=ADAPTER_NAME)
    # PeftModel wraps the model as base_model.model: its files name the weights from there.
    tensors = {f"base_model.model.{k}": v.detach().to("cpu").contiguous() for k, v in adapters.items()}
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = spec.peft_config()
    base = getattr(getattr(model, "config", None), "_name_or_path", None)
    config.base_model_name_or_path = base or None
    config.save_pretrained(str(out))
    (out / "lit_llm_lora.json").write_text(json.dumps({"format": LORA_STATE_FORMAT, "spec": spec.to_dict()}, indent=1))
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def _dense_weight(layer: Any) -> torch.Tensor:
    """The float weight ``(out, in)`` of a plain or bitsandbytes-4-bit Linear."""
    weight = layer.weight
    if getattr(weight, "quant_state", None) is not None:
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(weight.data, weight.quant_state).float()
    return weight.detach().float()


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into a plain ``nn.Linear`` (``W + alpha/r * B @ A``; a 4-bit base is dequantized) and the
    head's trained copy back in its place, in place; ``model`` is then an ordinary model (e.g. for
    ``save_pretrained``). Returns ``model``.

    Example::
        merge_lora(model).save_pretrained("export-merged")
    """
    require_peft()
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            layer: Any = module  # a lora.Linear or lora.bnb.Linear4bit: both have get_delta_weight
            base: Any = module.get_base_layer()
            weight = _dense_weight(base)  # (out, in)
            if ADAPTER_NAME in module.lora_A:
                weight = weight + layer.get_delta_weight(ADAPTER_NAME).float()
            dense = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, device=weight.device)
            dense.weight.copy_(weight)
            if base.bias is not None:
                dense.bias.copy_(base.bias.float())
            _set_submodule(model, name, dense)
        elif isinstance(module, ModulesToSaveWrapper):
            _set_submodule(model, name, module.modules_to_save[ADAPTER_NAME])
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if attr in model.__dict__:
            delattr(model, attr)
    for param in model.parameters():
        param.requires_grad_(True)
    return model
