"""Saving and loading compressed HF models whose layers a config cannot describe: structured-pruned and low-rank.

A structured-pruned BERT has fewer heads and a narrower FFN per block, and a factorized model has
:class:`~lit_llm.compression.low_rank.LowRankLinear` layers; ``from_pretrained`` rebuilds neither (transformers 5
dropped ``prune_heads`` / ``config.pruned_heads``, and a config has one FFN width for all blocks). Each artifact is
therefore an HF directory plus a small JSON manifest of what differs from the config:

- ``lit_llm_pruning.json``: per block, the heads and FFN width kept (``{"layers": {"bert.encoder.layer.0":
  {"num_attention_heads": 2, "attention_head_size": 8, "intermediate_size": 20}}}``);
- ``lit_llm_low_rank.json``: per factorized Linear, its shape and rank (``{"layers":
  {"bert.encoder.layer.0.attention.self.query": {"in_features": 32, "out_features": 32, "rank": 4, "bias": true}}}``).

:func:`load_pruned` / :func:`load_low_rank` build the model from ``config.json`` (a transformers class, never code
from the directory), reshape it as the manifest says, and load the weights strictly. Where the shapes differ from
the config, the weights are named ``lit_llm_model.safetensors``, not ``model.safetensors``: transformers 5's
``from_pretrained`` would otherwise load the directory, re-initialize every layer whose shape differs at random and
only log it; without ``model.safetensors`` it refuses. ``model.onnx``
(written by :func:`lit_llm.commands.export.export_onnx`) serves the same model with onnxruntime alone. The
directory also holds the tokenizer when one is given.

Example::
    save_pruned(model, "export-pruned", tokenizer)   # model: zero-masked or already shrunk
    model = load_pruned("export-pruned")              # really smaller, same logits
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from lit_llm.hf import check_export_dir, trust_remote_code
from lit_llm.compression.low_rank import LowRankLinear
from lit_llm.compression.pruning import find_structured_units, resize_structured, shrink_structured

__all__ = [
    "LOW_RANK_MANIFEST",
    "PRUNING_MANIFEST",
    "RESHAPED_WEIGHTS",
    "ManifestError",
    "artifact_stats",
    "check_artifact_dir",
    "full_state_dict",
    "gathered_state_dict",
    "hf_model_of",
    "load_low_rank",
    "load_pruned",
    "module_tokenizer",
    "save_low_rank",
    "save_pruned",
]

PRUNING_MANIFEST = "lit_llm_pruning.json"
LOW_RANK_MANIFEST = "lit_llm_low_rank.json"
# The weights of a model whose shapes its config does not describe (see the module docstring for why not model.*).
RESHAPED_WEIGHTS = "lit_llm_model.safetensors"
_PRUNING_FORMAT = "lit_llm.structured_pruning"
_LOW_RANK_FORMAT = "lit_llm.low_rank"
_VERSION = 1


class ManifestError(ValueError):
    """A compressed-model directory whose manifest or weights are missing, corrupt or inconsistent."""


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's whole state on CPU; FSDP2 shards (DTensors) are gathered, a collective every rank must run.

    Example::
        state = full_state_dict(model)  # on every rank
        if rank == 0:
            save_pruned(model, out, state_dict=state)
    """
    state = {}
    for key, value in model.state_dict().items():
        full = value.full_tensor() if hasattr(value, "full_tensor") else value
        state[key] = full.detach().cpu()
    return state


def gathered_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """:func:`full_state_dict` when the model holds FSDP2 shards (a collective: call it on every rank), else None,
    so that ``save_pretrained(state_dict=...)`` saves the model's own weights."""
    return full_state_dict(model) if any(hasattr(p, "full_tensor") for p in model.parameters()) else None


def hf_model_of(pl_module: nn.Module, model_attr: str, owner: str) -> PreTrainedModel:
    """``getattr(pl_module, model_attr)`` when it is a transformers model, else an error naming the fix.

    Raises:
        AttributeError: ``pl_module`` holds no HF model under ``model_attr``.
    """
    model = getattr(pl_module, model_attr, None)
    if not isinstance(model, PreTrainedModel):
        found = "nothing" if model is None else f"a {type(model).__name__}"
        raise AttributeError(
            f"{owner}: the artifact is written from the HF model at {type(pl_module).__name__}.{model_attr}, "
            f"which holds {found}. Keep the transformers model there, pass model_attr='<attribute>', or set "
            "export_artifact=False."
        )
    return model


def check_artifact_dir(path: str | Path, owner: str) -> Path:
    """Refuse an artifact directory that already holds files (an earlier run's artifact is never overwritten).

    Raises:
        FileExistsError: ``path`` exists and is not empty; the message names it and the ways out.
    """
    try:
        return check_export_dir(path)
    except FileExistsError:  # the same check, with the callback's own arguments as the way out
        raise FileExistsError(
            f"{owner}: artifact directory {str(path)!r} already holds files and lit-llm never overwrites an "
            "artifact; pass artifact_dir='<a new directory>', move the old one away, or set export_artifact=False."
        ) from None


def artifact_stats(path: str | Path, manifest_name: str) -> dict[str, Any]:
    """Numbers for the compression report: parameters (artifact and dense), and the file sizes in bytes."""
    path = Path(path)
    manifest = json.loads((path / manifest_name).read_text())
    stats: dict[str, Any] = {"path": str(path)}
    stats.update({k: manifest[k] for k in ("parameters", "dense_parameters") if k in manifest})
    stats["safetensors_bytes"] = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    if (path / "model.onnx").is_file():
        stats["onnx_bytes"] = (path / "model.onnx").stat().st_size
    return stats


def module_tokenizer(pl_module: nn.Module) -> PreTrainedTokenizerBase | None:
    """The module's ``tokenizer`` attribute when it is a transformers tokenizer (saved with the artifact), else None."""
    try:
        tokenizer = pl_module.tokenizer  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):  # our modules raise when they have none configured
        return None
    return tokenizer if isinstance(tokenizer, PreTrainedTokenizerBase) else None


# ------------------------------------------------------------------------------------------------ structured pruning
def write_module_artifact(
    pl_module: nn.Module,
    model_attr: str,
    owner: str,
    target: str | Path,
    save: Callable[..., Path],
    onnx: bool,
    is_global_zero: bool,
) -> Path | None:
    """What a compression callback writes at fit end: ``save(model, target, tokenizer, onnx, state_dict=...)``.

    The HF model is ``getattr(pl_module, model_attr)``; FSDP2 shards are gathered first (a collective: call it on
    every rank); only global rank zero writes. Returns the artifact directory there, None on the other ranks.

    Raises:
        AttributeError: no HF model at ``model_attr``.
        FileExistsError: ``target`` already holds files.
    """
    model = hf_model_of(pl_module, model_attr, owner)
    state = gathered_state_dict(model)
    if not is_global_zero:
        return None
    return save(model, check_artifact_dir(target, owner), module_tokenizer(pl_module), onnx, state_dict=state)


def save_pruned(
    model: PreTrainedModel,
    out_dir: str | Path,
    tokenizer: PreTrainedTokenizerBase | None = None,
    onnx: bool = True,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a pruned model with its zeroed heads / FFN neurons sliced away, so the files are really smaller.

    ``model`` is left as it is: a copy is built from its config, given its weights, shrunk with
    :func:`lit_llm.compression.pruning.shrink_structured` (exact: only heads / neurons whose output columns are all
    zero go) and saved with ``save_pretrained`` next to ``lit_llm_pruning.json``. A model without BERT-style blocks
    (e.g. GPT-2 after unstructured pruning) is saved as it is, zeros kept, with an empty ``layers`` manifest.

    Args:
        model: an HF model, zero-masked by structured pruning or already shrunk.
        out_dir: a new or empty directory.
        tokenizer: saved alongside when given.
        onnx: also write ``model.onnx`` (input_ids, attention_mask -> logits).
        state_dict: the model's full weights when they are sharded (see :func:`full_state_dict`).

    Returns:
        ``out_dir``.

    Raises:
        FileExistsError: ``out_dir`` already holds files (never overwritten).

    Example::
        apply_masks(model, structured_masks(model, heads=0.5))
        save_pruned(model, "export-pruned")
    """
    out = check_export_dir(out_dir)
    copy = _rebuild(model, state_dict)
    try:
        find_structured_units(copy)
        shrink_structured(copy)
        units = find_structured_units(copy)
    except ValueError:  # not a BERT-family model: nothing to slice, the zeros are the compression
        units = []
    mods = dict(copy.named_modules())
    layers = {
        u.block: {
            "num_attention_heads": u.num_heads,
            "attention_head_size": u.head_size,
            "intermediate_size": int(mods[u.ffn_in].out_features),
        }
        for u in units
    }
    parameters = sum(p.numel() for p in copy.parameters())
    manifest = {"layers": layers, "parameters": parameters, "dense_parameters": _rebuild_dense_count(model)}
    config = copy.config
    reshaped = any(
        w["num_attention_heads"] < config.num_attention_heads or w["intermediate_size"] < config.intermediate_size
        for w in layers.values()
    )
    return _write(copy, out, tokenizer, onnx, PRUNING_MANIFEST, _PRUNING_FORMAT, manifest, reshaped)


def load_pruned(path: str | Path) -> PreTrainedModel:
    """Load a directory written by :func:`save_pruned`: each block at its pruned width, weights loaded strictly.

    Args:
        path: the artifact directory (``config.json``, ``lit_llm_model.safetensors`` or, when no block was
            shrunk, ``model.safetensors``, and ``lit_llm_pruning.json``).

    Returns:
        The model in eval mode.

    Raises:
        FileNotFoundError: no such directory, or a file of the artifact is missing (named).
        ManifestError: a corrupt manifest or one with a missing / bad key (file and key named), or weights that do
            not fit the manifest.

    Example::
        model = load_pruned("runs/rt/version_0/export-pruned")
        logits = model(**tokenizer(["a fine film"], return_tensors="pt")).logits
    """
    path = Path(path)
    manifest = _read_manifest(path, PRUNING_MANIFEST, _PRUNING_FORMAT)
    model = _build(path)
    layers = _layers(manifest, path / PRUNING_MANIFEST)
    units = {u.block: u for u in find_structured_units(model)} if layers else {}
    widths = {}
    for block, entry in layers.items():
        where = f"{path / PRUNING_MANIFEST}: layers.{block}"
        heads = _positive_int(entry, "num_attention_heads", where)
        head_size = _positive_int(entry, "attention_head_size", where)
        widths[block] = (heads, _positive_int(entry, "intermediate_size", where))
        if block in units and units[block].head_size != head_size:
            raise ManifestError(
                f"{where}.attention_head_size={head_size} but config.json gives heads of size "
                f"{units[block].head_size}; the manifest belongs to another model."
            )
    try:
        resize_structured(model, widths)
    except (KeyError, ValueError) as err:
        reason = err.args[0] if isinstance(err, KeyError) else err  # str(KeyError) adds quotes
        raise ManifestError(f"{path / PRUNING_MANIFEST}: key 'layers': {reason}") from None
    return _load_weights(model, path, PRUNING_MANIFEST)


# ------------------------------------------------------------------------------------------------ low rank
def save_low_rank(
    model: PreTrainedModel,
    out_dir: str | Path,
    tokenizer: PreTrainedTokenizerBase | None = None,
    onnx: bool = True,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a model with :class:`~lit_llm.compression.low_rank.LowRankLinear` layers as they are (factors, not
    merged back).

    Args:
        model: an HF model in which :func:`lit_llm.compression.low_rank.factorize_model` replaced some Linear layers.
        out_dir: a new or empty directory.
        tokenizer: saved alongside when given.
        onnx: also write ``model.onnx``.
        state_dict: the model's full weights when they are sharded (see :func:`full_state_dict`).

    Returns:
        ``out_dir``.

    Raises:
        FileExistsError: ``out_dir`` already holds files.
        ValueError: the model has no LowRankLinear layer.

    Example::
        factorize_model(model, rank=64)
        save_low_rank(model, "export-low-rank")
    """
    out = check_export_dir(out_dir)
    layers = {
        name: {"in_features": m.in_features, "out_features": m.out_features, "rank": m.rank, "bias": m.has_bias}
        for name, m in model.named_modules()
        if isinstance(m, LowRankLinear)
    }
    if not layers:
        raise ValueError(
            f"save_low_rank: {type(model).__name__} has no LowRankLinear layer; factorize it first "
            "(lit_llm.compression.low_rank.factorize_model or the LowRankFactorization callback)."
        )
    copy = _rebuild(model, state_dict, low_rank=layers)
    parameters = sum(p.numel() for p in copy.parameters())
    manifest = {"layers": layers, "parameters": parameters, "dense_parameters": _rebuild_dense_count(model)}
    return _write(copy, out, tokenizer, onnx, LOW_RANK_MANIFEST, _LOW_RANK_FORMAT, manifest, reshaped=True)


def load_low_rank(path: str | Path) -> PreTrainedModel:
    """Load a directory written by :func:`save_low_rank`: the factorized layers rebuilt, weights loaded strictly.

    Raises:
        FileNotFoundError: no such directory, or a file of the artifact is missing (named).
        ManifestError: a corrupt manifest, a missing / bad key (file and key named), a layer name that is not a
            Linear of the model, or weights that do not fit the manifest.

    Example::
        model = load_low_rank("runs/rt/version_0/export-low-rank")
    """
    path = Path(path)
    manifest = _read_manifest(path, LOW_RANK_MANIFEST, _LOW_RANK_FORMAT)
    model = _build(path)
    layers = {}
    for name, entry in _layers(manifest, path / LOW_RANK_MANIFEST).items():
        where = f"{path / LOW_RANK_MANIFEST}: layers.{name}"
        layers[name] = {key: _positive_int(entry, key, where) for key in ("in_features", "out_features", "rank")}
        bias = entry.get("bias")
        if not isinstance(bias, bool):
            raise ManifestError(f"{where}.bias={bias!r}: must be true or false.")
        layers[name]["bias"] = bias
    _factorize_as(model, layers, f"{path / LOW_RANK_MANIFEST}: layers")
    return _load_weights(model, path, LOW_RANK_MANIFEST)


def _factorize_as(model: nn.Module, layers: dict[str, dict[str, Any]], where: str) -> None:
    """Replace the named Linear layers by LowRankLinear of the given ranks (uninitialized factors)."""
    for name, spec in layers.items():
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            raise ManifestError(f"{where}.{name}: {type(model).__name__} has no such layer.") from None
        if type(linear) is not nn.Linear or (linear.in_features, linear.out_features) != (
            spec["in_features"],
            spec["out_features"],
        ):
            raise ManifestError(
                f"{where}.{name}: expected a Linear({spec['in_features']}, {spec['out_features']}) in the model "
                f"built from config.json, found {linear!r}; the manifest belongs to another model."
            )
        new = LowRankLinear(spec["in_features"], spec["out_features"], spec["rank"], bias=spec["bias"])
        new.to(device=linear.weight.device, dtype=linear.weight.dtype)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)


# ------------------------------------------------------------------------------------------------ shared
def _rebuild(
    model: PreTrainedModel, state_dict: dict[str, torch.Tensor] | None, low_rank: dict[str, Any] | None = None
) -> PreTrainedModel:
    """A CPU copy of ``model`` built the way the loaders build it (config, then structure, then weights), so what
    is written is exactly what loads. Works on sharded models, where ``copy.deepcopy`` would copy shards."""
    if not isinstance(model, PreTrainedModel):
        raise TypeError(
            f"expected a transformers PreTrainedModel (save_pretrained, config), got {type(model).__name__}"
        )
    state = full_state_dict(model) if state_dict is None else state_dict
    copy = _plain_class(model)(_config_copy(model.config))
    widths = {}
    units = {u.block: u for u in find_structured_units(model)} if _has_blocks(model) else {}
    mods = dict(model.named_modules())
    for block, u in units.items():
        widths[block] = (u.num_heads, int(mods[u.ffn_in].out_features))
    if widths:  # already shrunk in memory (e.g. after a test run): same shapes in the copy
        resize_structured(copy, widths)
    if low_rank:
        _factorize_as(copy, low_rank, "model")
    _cast_like(copy, state)
    missing, unexpected = _strict_load(copy, state)
    if missing or unexpected:
        raise ValueError(
            f"cannot rebuild {type(model).__name__} from its config and weights: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}. Was its structure changed after training (e.g. int8 layers: put "
            "Int8Quantization after the pruning / low-rank callback)?"
        )
    return copy.eval()


def _plain_class(model: PreTrainedModel) -> type[PreTrainedModel]:
    """The transformers class of ``model``; under FSDP2 ``fully_shard`` swapped in a subclass ``FSDP<Class>``."""
    cls = type(model)
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch build without distributed
        return cls
    if not issubclass(cls, FSDPModule):
        return cls
    return next(c for c in cls.__mro__ if issubclass(c, PreTrainedModel) and not issubclass(c, FSDPModule))


def _has_blocks(model: nn.Module) -> bool:
    try:
        find_structured_units(model)
    except ValueError:
        return False
    return True


def _rebuild_dense_count(model: PreTrainedModel) -> int:
    """Parameters of the same architecture at full size (from the config alone, on the meta device)."""
    with torch.device("meta"):
        dense = _plain_class(model)(_config_copy(model.config))
    return sum(p.numel() for p in dense.parameters())


def _config_copy(config: PretrainedConfig) -> PretrainedConfig:
    return type(config).from_dict(config.to_dict())


def _cast_like(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(dtypes) == 1:
        model.to(dtype=dtypes.pop())


def _strict_load(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Load ``state`` into ``model``; returns (missing, unexpected) keys. A key missing because its tensor is tied
    to a loaded one (an LM head tied to the embeddings is saved once) is not counted. Shapes must match."""
    expected = model.state_dict()
    unexpected = sorted(set(state) - set(expected))
    loaded = {expected[k].data_ptr() for k in state if k in expected}
    missing = sorted(k for k in expected if k not in state and expected[k].data_ptr() not in loaded)
    if missing or unexpected:
        return missing, unexpected
    wrong = [(k, tuple(state[k].shape), tuple(expected[k].shape)) for k in state if state[k].shape != expected[k].shape]
    if wrong:
        return [f"{k}: saved {a}, expected {b}" for k, a, b in wrong], []
    model.load_state_dict(state, strict=False)
    return [], []


def _write(
    model: PreTrainedModel,
    out: Path,
    tokenizer: PreTrainedTokenizerBase | None,
    onnx: bool,
    manifest_name: str,
    fmt: str,
    manifest: dict[str, Any],
    reshaped: bool,
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    if reshaped:  # hide the weights from from_pretrained, which would load them into random layers (module doc)
        for name in ("model.safetensors", "model.safetensors.index.json"):
            if (out / name).is_file():
                (out / name).rename(out / name.replace("model.safetensors", RESHAPED_WEIGHTS))
    (out / manifest_name).write_text(json.dumps({"format": fmt, "version": _VERSION, **manifest}, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    if onnx:
        from lit_llm.commands.export import export_onnx

        export_onnx(model, out / "model.onnx")
    return out


def _read_manifest(path: Path, name: str, fmt: str) -> dict[str, Any]:
    if not path.is_dir():
        raise FileNotFoundError(f"compressed model directory {str(path)!r} does not exist")
    file = path / name
    if not file.is_file():
        raise FileNotFoundError(
            f"{file} is missing: {path} was not written by lit-llm's save_pruned / save_low_rank (or the file was "
            f"removed). Load a plain HF directory with from_pretrained instead."
        )
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ManifestError(f"{file} is not valid JSON ({err}); re-export the model.") from None
    if not isinstance(manifest, dict):
        raise ManifestError(f"{file}: expected a JSON object, got {type(manifest).__name__}.")
    if manifest.get("format") != fmt:
        raise ManifestError(f"{file}: key 'format' is {manifest.get('format')!r}, expected {fmt!r}.")
    if manifest.get("version") != _VERSION:
        raise ManifestError(
            f"{file}: key 'version' is {manifest.get('version')!r}; this lit-llm reads version {_VERSION}."
        )
    return manifest


def _layers(manifest: dict[str, Any], file: Path) -> dict[str, dict[str, Any]]:
    layers = manifest.get("layers")
    if not isinstance(layers, dict) or not all(isinstance(v, dict) for v in layers.values()):
        raise ManifestError(f"{file}: key 'layers' must be an object of objects, got {layers!r:.80}.")
    return layers


def _positive_int(entry: dict[str, Any], key: str, where: str) -> int:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ManifestError(f"{where}.{key}={value!r}: must be an integer >= 1 (missing or corrupt).")
    return value


def _build(path: Path) -> PreTrainedModel:
    """The model class named in ``config.json`` (a transformers class, never code from the directory)."""
    import transformers

    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} is missing; the artifact directory is incomplete.")
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code())
    names = getattr(config, "architectures", None) or []
    cls = getattr(transformers, names[0], None) if names else None
    if cls is None or not isinstance(cls, type) or not issubclass(cls, PreTrainedModel):
        raise ManifestError(
            f"{config_file}: key 'architectures'={names!r} names no transformers model class; "
            "the artifact must hold a model transformers implements."
        )
    return cls(config)


def _load_weights(model: PreTrainedModel, path: Path, manifest_name: str) -> PreTrainedModel:
    from safetensors.torch import load_file

    bases = (RESHAPED_WEIGHTS, "model.safetensors")
    base = next((b for b in bases if (path / b).is_file() or (path / f"{b}.index.json").is_file()), None)
    if base is None:
        raise FileNotFoundError(
            f"{path} holds neither {RESHAPED_WEIGHTS} nor model.safetensors (nor their sharded index); "
            "the artifact directory is incomplete."
        )
    index = path / f"{base}.index.json"
    if index.is_file():  # sharded by save_pretrained for large models
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = [base]
    state: dict[str, torch.Tensor] = {}
    for name in files:
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path / name} is missing; the artifact directory is incomplete.")
        state.update(load_file(str(path / name)))
    _cast_like(model, state)
    missing, unexpected = _strict_load(model, state)
    if missing or unexpected:
        raise ManifestError(
            f"{path}: the weights in {', '.join(files)} do not fit the model that config.json and {manifest_name} "
            f"describe: missing {missing[:5]}, unexpected {unexpected[:5]}."
        )
    return model.eval()
