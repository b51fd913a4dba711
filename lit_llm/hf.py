"""Hugging Face models: loading and exporting them with errors that say what to do, and reading their structure.

Shared by every lit-llm module: ``model`` is a local directory or hub id (``from_pretrained``), or a config
dict with a ``model_type`` key for training from scratch (``AutoConfig.for_model``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from torch import nn
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "ModelSpec",
    "build_config",
    "load_model",
    "load_tokenizer",
    "check_export_dir",
    "export_pretrained",
    "trust_remote_code",
    "BLOCK_PARAMETER_PATTERN",
    "CONFIG_ALIASES",
    "has_next_sentence_head",
    "config_probability",
    "block_index",
    "config_size",
    "find_blocks",
]

ModelSpec = str | dict[str, Any]

# The one answer to "where are the transformer blocks": the ModuleList named `layer` (BERT-likes:
# encoder.layer), `h` (GPT-2), `layers` (Llama, Mistral), `block` (T5) or `blocks`. Embeddings, pooler and task
# heads sit outside it. Pruning, low rank, layer-wise LR decay, distillation and the planner all read it here.
BLOCK_LIST_NAMES: tuple[str, ...] = ("layer", "layers", "h", "block", "blocks")
# A module or parameter name inside block i (group 1 is i): "bert.encoder.layer.3.attention.self.query".
BLOCK_PARAMETER_PATTERN = r"(?:^|\.)(?:" + "|".join(BLOCK_LIST_NAMES) + r")\.(\d+)\."
_BLOCK_PARAMETER = re.compile(BLOCK_PARAMETER_PATTERN)
_BLOCK_LIST = re.compile(r"(?:^|\.)(?:" + "|".join(BLOCK_LIST_NAMES) + r")$")

# The one place for a config's aliases: each size under the names the HF model families give it.
CONFIG_ALIASES: dict[str, tuple[str, ...]] = {
    "hidden_size": ("hidden_size", "n_embd", "d_model"),
    "num_layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "num_heads": ("num_attention_heads", "n_head", "num_heads"),
    "intermediate_size": ("intermediate_size", "n_inner", "d_ff", "ffn_dim"),
    "max_positions": ("max_position_embeddings", "n_positions", "n_ctx"),
    "vocab_size": ("vocab_size",),
    "num_kv_heads": ("num_key_value_heads",),
    "head_dim": ("head_dim",),
    # probabilities (config_probability)
    "hidden_dropout": ("hidden_dropout_prob", "resid_pdrop", "dropout"),
    "attention_dropout": ("attention_probs_dropout_prob", "attn_pdrop", "attention_dropout"),
}


def config_size(config: Any, name: str) -> int | None:
    """The size ``name`` (a key of :data:`CONFIG_ALIASES`) of an HF config under whichever alias it uses.

    None when the config has none of the aliases as an int (GPT-2's ``n_inner`` is None: 4 x hidden is meant).

    Raises:
        KeyError: ``name`` is not a key of :data:`CONFIG_ALIASES`.

    Example::
        >>> from types import SimpleNamespace
        >>> config_size(SimpleNamespace(n_embd=768), "hidden_size")
        768
    """
    value = _first_alias(config, name, (int,))
    return None if value is None else int(value)


def config_probability(config: Any, name: str) -> float:
    """The probability ``name`` (``hidden_dropout`` or ``attention_dropout``) of an HF config under whichever alias
    it uses; 0.0 when it has none.

    Example::
        >>> from types import SimpleNamespace
        >>> config_probability(SimpleNamespace(attn_pdrop=0.1), "attention_dropout")
        0.1
    """
    value = _first_alias(config, name, (int, float))
    return 0.0 if value is None else float(value)


def _first_alias(config: Any, name: str, types: tuple[type, ...]) -> int | float | None:
    """The value of the first alias of ``name`` that ``config`` has as one of ``types`` (a bool is none)."""
    for key in CONFIG_ALIASES[name]:
        value: Any = getattr(config, key, None)
        if isinstance(value, types) and not isinstance(value, bool):
            return value  # type: ignore[return-value]
    return None


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The first non-empty ModuleList of transformer blocks in ``model`` and its module name.

    Raises:
        ValueError: the model has none (named layer / layers / h / block / blocks).

    Example::
        name, blocks = find_blocks(model)  # ("bert.encoder.layer", ModuleList(...)) for a BERT classifier
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and _BLOCK_LIST.search(name) and len(module) > 0:
            return name, module
    raise ValueError(
        f"{type(model).__name__} has no ModuleList of transformer blocks named {' / '.join(BLOCK_LIST_NAMES)}; "
        "layer selection and hidden-state distillation need one."
    )


def block_index(name: str) -> int | None:
    """Index of the block that the module or parameter ``name`` is in, or None outside the blocks.

    Example::
        >>> block_index("bert.encoder.layer.3.attention.self.query.weight")
        3
        >>> block_index("bert.embeddings.word_embeddings.weight") is None
        True
    """
    match = _BLOCK_PARAMETER.search(name)
    return int(match.group(1)) if match else None


def trust_remote_code() -> bool:
    """Whether ``from_pretrained`` may run Python code shipped with a model: off unless the user sets
    ``LIT_LLM_TRUST_REMOTE_CODE=1`` (a model repository's code runs with the user's rights)."""
    value = os.environ.get("LIT_LLM_TRUST_REMOTE_CODE", "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise ValueError(f"LIT_LLM_TRUST_REMOTE_CODE={value!r}: use 1 to allow a model's own code, or 0 / unset.")


def _from_pretrained(load: Any, name: str, **kwargs: Any) -> Any:
    """``load(name, trust_remote_code=..., **kwargs)``, naming our switch when the model needs its own code."""
    try:
        return load(name, trust_remote_code=trust_remote_code(), **kwargs)
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        raise ValueError(
            f"{name!r} needs its own Python code to load (auto_map in its config.json), which lit-llm does not run "
            "by default. Set LIT_LLM_TRUST_REMOTE_CODE=1 if you trust that code, or use a model transformers "
            "supports natively."
        ) from None


def _looks_local(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else is meant as a path on disk.
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def _check_exists(name: str, what: str) -> None:
    if not Path(name).expanduser().exists() and _looks_local(name):
        raise FileNotFoundError(
            f"{what} {name!r} does not exist. Give a local directory saved with save_pretrained(), "
            "or a hub id such as 'bert-base-uncased' (needs network or the HF cache)."
        )


def build_config(model: ModelSpec, **overrides: Any) -> PretrainedConfig:
    """The model's config: read from ``model`` (a directory or hub id) or built from a dict with ``model_type``.

    Raises:
        FileNotFoundError: a local path that does not exist.
        ValueError: a config dict without ``model_type``.
    """
    if isinstance(model, dict):
        spec = dict(model)
        model_type = spec.pop("model_type", None)
        if not model_type:
            raise ValueError(
                f"model config {model!r} has no 'model_type': add e.g. model_type: bert "
                "(any key of transformers.CONFIG_MAPPING)."
            )
        spec.update(overrides)
        return AutoConfig.for_model(model_type, **spec)
    _check_exists(model, "model")
    return _from_pretrained(AutoConfig.from_pretrained, model, **overrides)


def has_next_sentence_head(model: ModelSpec) -> bool:
    """Whether transformers' ``AutoModelForPreTraining`` class for ``model`` is BERT's masked-LM plus next-sentence
    pair: one that takes ``next_sentence_label`` and so returns ``seq_relationship_logits`` (BERT, MobileBERT,
    Megatron-BERT, BigBird, ...). For others that class is a plain masked LM (RoBERTa, DistilBERT), an ELECTRA
    discriminator, ALBERT's sentence-order model (``sop_logits``), or there is none (RoFormer).

    Raises:
        FileNotFoundError: a local path that does not exist.
        ValueError: a config dict without ``model_type``.
    """
    import inspect

    from transformers import MODEL_FOR_PRETRAINING_MAPPING

    config_class = type(build_config(model))
    if config_class not in MODEL_FOR_PRETRAINING_MAPPING:
        return False
    model_class: Any = MODEL_FOR_PRETRAINING_MAPPING[config_class]
    return "next_sentence_label" in inspect.signature(model_class.forward).parameters


def load_model(auto_cls: Any, model: ModelSpec, **config_overrides: Any) -> PreTrainedModel:
    """Load ``model`` with ``auto_cls`` (e.g. ``AutoModelForSequenceClassification``) or build it from a config.

    Args:
        auto_cls: a ``transformers`` Auto class.
        model: a directory, a hub id or a config dict with ``model_type``.
        config_overrides: config attributes to set (``num_labels``, ``id2label``, ...).
    """
    if isinstance(model, dict):
        return auto_cls.from_config(build_config(model, **config_overrides))
    _check_exists(model, "model")
    return _from_pretrained(auto_cls.from_pretrained, model, **config_overrides)


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a directory or hub id (the fast one where it exists).

    Raises:
        FileNotFoundError: a local path that does not exist.
    """
    _check_exists(name, "tokenizer")
    return _from_pretrained(AutoTokenizer.from_pretrained, name)


def check_export_dir(path: str | Path) -> Path:
    """Refuse an export directory that already holds files, so an earlier export is never overwritten.

    Raises:
        FileExistsError: the directory exists and is not empty.
    """
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(
            f"export directory {str(path)!r} already holds files; choose another export_dir or move it away "
            "(lit-llm never overwrites an earlier export)."
        )
    return path


def export_pretrained(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    out_dir: str | Path,
    state_dict: dict[str, Any] | None = None,
) -> Path:
    """``save_pretrained`` the model (safetensors) and tokenizer into ``out_dir``, which must be new or empty.

    ``state_dict``: the weights to write instead of the model's own (e.g. FSDP2 shards gathered into full tensors).
    """
    out = check_export_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True, state_dict=state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out
