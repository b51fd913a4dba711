"""Parameter groups for transformer optimizers: no weight decay on biases and norms, layer-wise LR decay.

These are plain functions of a ``torch.nn.Module`` so they work in any training loop; our modules call
them from ``configure_optimizers`` and hand the groups to whatever optimizer class the user chose
(``torch.optim.AdamW`` by default, any ``torch.optim`` class or ``bitsandbytes.optim.AdamW8bit`` from the CLI).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from lit_llm.hf import block_index, config_size

__all__ = [
    "build_optimizer",
    "use_fused_kernel",
    "no_decay_param_groups",
    "layerwise_param_groups",
    "layer_id",
    "num_layers",
    "is_no_decay",
]

_NORM_TYPES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.Embedding)
# Embeddings are excluded from weight decay as in BERT's and GPT-2's reference recipes.


def is_no_decay(module: nn.Module, param_name: str) -> bool:
    """Whether a parameter should get no weight decay: biases, norm weights and embeddings.

    Args:
        module: the module that directly owns the parameter.
        param_name: the parameter's local name (``weight`` or ``bias``).
    """
    if param_name.endswith("bias"):
        return True
    # HF models sometimes implement norms as their own classes (T5LayerNorm, LlamaRMSNorm).
    return isinstance(module, _NORM_TYPES) or "norm" in type(module).__name__.lower()


def _named_trainable(model: nn.Module) -> Iterable[tuple[str, nn.Module, str, nn.Parameter]]:
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for local, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full = f"{module_name}.{local}" if module_name else local
            yield full, module, local, param


def no_decay_param_groups(model: nn.Module, weight_decay: float | None = None) -> list[dict[str, Any]]:
    """Two parameter groups: weights with decay, and biases / norms / embeddings without.

    The decayed group carries no ``weight_decay`` key unless ``weight_decay`` is given, so the optimizer's
    own default (as set on the CLI) applies to it.

    Args:
        model: the module to optimize; frozen parameters are left out.
        weight_decay: decay for the decayed group, or None for the optimizer's default.

    Example::
        optimizer = torch.optim.AdamW(no_decay_param_groups(model), lr=2e-5, weight_decay=0.01)
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, module, local, param in _named_trainable(model):
        (no_decay if is_no_decay(module, local) else decay).append(param)
    decay_group: dict[str, Any] = {"params": decay, "group_name": "decay"}
    if weight_decay is not None:
        decay_group["weight_decay"] = weight_decay
    groups = [decay_group, {"params": no_decay, "weight_decay": 0.0, "group_name": "no_decay"}]
    return [g for g in groups if g["params"]]


def num_layers(model: nn.Module) -> int:
    """Number of transformer blocks, read from the HF config (``num_hidden_layers`` / ``n_layer``)."""
    value = config_size(getattr(model, "config", None), "num_layers")
    if value is not None:
        return value
    indices = [i for name, _ in model.named_parameters() if (i := block_index(name)) is not None]
    if not indices:
        raise ValueError(
            f"layer-wise LR decay: cannot find the transformer blocks of {type(model).__name__}: its config has no "
            "num_hidden_layers and no parameter name contains 'layer.<i>.'; pass layer_decay=None."
        )
    return max(indices) + 1


def layer_id(param_name: str, n_layers: int) -> int:
    """Depth of a parameter: 0 for embeddings, i + 1 for block i, ``n_layers + 1`` for everything on top.

    Args:
        param_name: the full parameter name, e.g. ``bert.encoder.layer.3.attention.self.query.weight``.
        n_layers: the number of transformer blocks.
    """
    if "embed" in param_name or param_name.endswith(("wte.weight", "wpe.weight")):
        return 0
    index = block_index(param_name)
    return n_layers + 1 if index is None else index + 1


def layerwise_param_groups(
    model: nn.Module,
    lr: float,
    decay: float,
    weight_decay: float | None = None,
) -> list[dict[str, Any]]:
    """Layer-wise learning-rate decay (ELECTRA, Clark et al. 2020; BEiT): lower layers learn more slowly.

    The head and pooler get ``lr``; block ``i`` of ``L`` gets ``lr * decay ** (L - i)``; embeddings get
    ``lr * decay ** (L + 1)``. Biases, norms and embeddings get no weight decay. Every group's ``lr``
    is set explicitly, so a warmup schedule that scales each group from its own base rate keeps the ratios.

    Args:
        model: an HF transformer (or any module whose block parameters are named ``...layer.<i>...``).
        lr: learning rate of the top of the model.
        decay: multiplicative decay per layer, in (0, 1].
        weight_decay: weight decay for the decayed parameters; None leaves the optimizer's default.

    Each group also carries ``lr_scale`` (its rate relative to ``lr``).

    Raises:
        ValueError: when ``decay`` is outside (0, 1] or the blocks cannot be found.

    Example::
        groups = layerwise_param_groups(model, lr=5e-5, decay=0.8, weight_decay=0.01)
        optimizer = torch.optim.AdamW(groups)
    """
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"layer_decay={decay!r}: the per-layer decay must be in (0, 1], e.g. 0.8.")
    n_layers = num_layers(model)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for full, module, local, param in _named_trainable(model):
        depth = layer_id(full, n_layers)
        nd = is_no_decay(module, local)
        key = (depth, nd)
        if key not in groups:
            scale = decay ** (n_layers + 1 - depth)
            groups[key] = {
                "params": [],
                "lr": lr * scale,
                "lr_scale": scale,
                "group_name": f"layer_{depth}_{'no_decay' if nd else 'decay'}",
            }
            if nd:
                groups[key]["weight_decay"] = 0.0
            elif weight_decay is not None:
                groups[key]["weight_decay"] = weight_decay
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups)]


OptimizerFactory = Callable[[Iterable[Any]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


def build_optimizer(
    model: nn.Module,
    factory: OptimizerFactory,
    layer_decay: float | None = None,
    extra: nn.Module | None = None,
) -> torch.optim.Optimizer:
    """Build ``factory``'s optimizer on ``model`` with no decay on biases / norms and optional layer-wise decay.

    The factory is any callable that takes param groups, e.g. ``torch.optim.AdamW`` or
    ``functools.partial(bitsandbytes.optim.AdamW8bit, lr=1e-4)`` (what LightningCLI's ``OptimizerCallable`` gives).
    With ``layer_decay`` each group's rate is the optimizer's own ``lr`` times its depth scale. ``extra`` is a module
    trained beside ``model`` at the optimizer's own ``lr`` (as the top of the model), e.g. a pre-training head kept
    outside the HF model.
    A ``torch.optim.Adam`` / ``AdamW`` given neither ``fused`` nor ``foreach`` runs torch's fused kernel where
    every parameter allows it (see :func:`use_fused_kernel`).

    Example::
        optimizer = build_optimizer(model, functools.partial(torch.optim.AdamW, lr=3e-5), layer_decay=0.9)
    """
    extra_groups = [] if extra is None else [
        {**group, "group_name": f"extra_{group['group_name']}"} for group in no_decay_param_groups(extra)
    ]
    if layer_decay is None:
        return use_fused_kernel(factory(no_decay_param_groups(model) + extra_groups))
    groups = layerwise_param_groups(model, lr=1.0, decay=layer_decay, weight_decay=None)
    for group in groups:
        del group["lr"]  # take the optimizer's default, then scale it below
    optimizer = factory(groups + [{**group, "lr_scale": 1.0} for group in extra_groups])
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * group["lr_scale"]
    return use_fused_kernel(optimizer)


_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _fused_devices() -> set[str]:
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # a private helper: without it, the two devices fused Adam has long supported
        return {"cpu", "cuda"}
    return set(_get_fused_kernels_supported_devices())


def _keep_implementation(fused: bool | None, foreach: bool | None) -> Callable[[torch.optim.Optimizer], None]:
    """A ``load_state_dict`` post-hook: ``Optimizer.load_state_dict`` takes every group's settings from the
    checkpoint, so a run resumed from a checkpoint of another choice (one written before the fused default, or
    before the user set ``fused: false``) would silently change implementation. This re-applies the choice."""

    def hook(optimizer: torch.optim.Optimizer) -> None:
        for group in optimizer.param_groups:
            group["fused"], group["foreach"] = fused, foreach
            if not fused:
                continue
            for param in group["params"]:
                state = optimizer.state.get(param, {})
                if torch.is_tensor(state.get("step")):  # a fused group's step: float32 on the parameter's device
                    state["step"] = state["step"].to(dtype=torch.float32, device=param.device)

    return hook


def use_fused_kernel(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Switch a ``torch.optim.Adam`` / ``AdamW`` to torch's fused kernel when the user chose no implementation.

    On a CPU torch otherwise updates the parameters one tensor at a time: for all-MiniLM-L6-v2 (22.7M
    parameters, 2 cores) a step took 66 ms that way and 12 ms fused (``benchmarks/optimizer_step.md``). The HF
    Trainer's default optimizer (``adamw_torch_fused``) is the same kernel. The switch is made only when
    ``fused`` and ``foreach`` were both left unset (an explicit ``fused: false`` or ``foreach: true`` is kept),
    the optimizer is neither ``capturable`` nor ``differentiable``, and every parameter is a plain
    ``nn.Parameter`` (not a sharded DTensor) of a float dtype on a device with the kernel. Anything else,
    including other optimizer classes and bitsandbytes', is returned unchanged.

    Example::
        optimizer = use_fused_kernel(torch.optim.AdamW(model.parameters(), lr=1e-4))
        optimizer.param_groups[0]["fused"]   # True on CPU and CUDA
    """
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
        return optimizer
    defaults = optimizer.defaults
    if any(defaults.get(key) is not None for key in ("fused", "foreach")):
        optimizer.register_load_state_dict_post_hook(_keep_implementation(defaults["fused"], defaults["foreach"]))
        return optimizer
    if defaults.get("capturable") or defaults.get("differentiable"):
        return optimizer
    devices = _fused_devices()
    for group in optimizer.param_groups:
        for param in group["params"]:
            if type(param) is not nn.Parameter or param.dtype not in _FUSED_DTYPES or param.device.type not in devices:
                return optimizer
    for group in optimizer.param_groups:
        group["fused"] = True
    defaults["fused"] = True
    optimizer.register_load_state_dict_post_hook(_keep_implementation(True, None))
    # Unlike torch's fused=True constructor, not `_step_supports_amp_scaling`: a GradScaler then unscales the
    # gradients before the step as for any optimizer, and Lightning keeps allowing gradient clipping under AMP.
    return optimizer


def optimizers_for(
    model: nn.Module,
    factory: OptimizerFactory,
    lr_scheduler: SchedulerFactory | None = None,
    layer_decay: float | None = None,
    extra: nn.Module | None = None,
) -> Any:
    """What ``configure_optimizers`` returns: :func:`build_optimizer`, plus the scheduler stepped every optimizer step.

    Example::
        def configure_optimizers(self):
            return optimizers_for(self.model, self.optimizer_factory, self.lr_scheduler_factory, self.layer_decay)
    """
    optimizer = build_optimizer(model, factory, layer_decay, extra)
    if lr_scheduler is None:
        return optimizer
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": lr_scheduler(optimizer), "interval": "step"}}
