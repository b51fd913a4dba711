"""LoRA / QLoRA fine-tuning as a drop-in callback (the functional core is :mod:`lit_llm.training.lora`)."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from typing_extensions import override

from lit_llm.compression.compressed_models import (
    check_artifact_dir,
    gathered_state_dict,
    hf_model_of,
    module_tokenizer,
    write_module_artifact,
)
from lit_llm.errors import InvalidArgumentError
from lit_llm.hf import export_pretrained
from lit_llm.training.lora import (
    LORA_STATE_FORMAT,
    LoraSpec,
    require_peft,
    apply_lora,
    base_fingerprint,
    check_4bit_available,
    find_head,
    find_lora_targets,
    merge_lora,
    parameter_counts,
    qlora_compute_dtype,
    save_adapters,
    trainable_parameter_names,
)

__all__ = ["LoRA"]


class LoRA(Callback):
    """Fine-tune low-rank adapters (LoRA, through ``peft``) on a frozen base model; QLoRA with ``quantize_base="nf4"``.

    Right after the module's ``configure_model`` (before checkpoint restore, sharding and the optimizer), the
    Linear layers that match ``patterns`` (default: every Linear inside the transformer blocks) of
    ``getattr(pl_module, model_attr)`` get adapters in place, everything else is frozen except the task head
    (``head``: trained in full). The module's ``training_step`` and ``configure_optimizers`` stay as they are: the
    optimizer must be built from the module's parameters after ``configure_model`` (checked at train start).

    Checkpoints hold only the model's trainable weights (adapters and head), whatever the module keeps beside the
    model (e.g. a pre-training head of its own), and the optimizer state (a sharded FSDP2
    checkpoint keeps the frozen base too: ``torch.distributed.checkpoint`` restores only complete states); a resume
    (``ckpt_path=...``) rebuilds the same base, checks it is the same (a fingerprint kept in the callback state),
    and loads the adapters. At fit end the adapters are merged into the model, which becomes a plain HF model
    again (the module's own export, ``test`` and ``predict`` see it; a later load of this run's adapter checkpoint,
    such as our modules' restore of the best checkpoint, is folded into the merged weights). The adapters are
    written to ``artifact_dir`` (default ``<trainer.default_root_dir>/export-lora``), a directory
    ``peft.PeftModel.from_pretrained`` loads; with ``export_merged=True`` the merged model goes to ``merged_dir``
    (default ``<trainer.default_root_dir>/export-lora-merged``), which ``from_pretrained`` and ``pipeline()`` load.
    A resumed run (``ckpt_path``) whose default directories already hold a finished run's artifacts writes beside
    them, to ``export-lora.resume<n>`` (as the CLI does for the module's ``export``).
    ``lit-llm export`` of a checkpoint written with LoRA re-applies the adapters and exports the merged model.

    QLoRA: the target layers' frozen weights are stored in 4-bit NF4 (bitsandbytes) and their matmuls and the
    adapters use ``compute_dtype``: with ``"auto"``, bf16 on CUDA and on a CPU with bf16 matmul hardware (AMX or
    AVX-512 bf16), fp32 on other CPUs, where bf16 matmuls run on a slow fallback kernel (30x slower for a NF4
    layer of MiniLM on an AVX2 EPYC). At fit start it checks that bitsandbytes 4-bit runs on the device (it does
    on CPU with bitsandbytes 0.50.2) and raises an error naming what runs otherwise. Not with FSDP2 (4-bit
    weights are not sharded): use DDP.

    Contract with the module: ``getattr(pl_module, model_attr)`` is the model to adapt (an ``nn.Module``; a
    transformers model for the artifacts); ``pl_module.tokenizer``, when it is a transformers tokenizer, is saved
    with the artifacts.

    Args:
        rank: the adapters' rank ``r``.
        alpha: scaling numerator: the update is ``alpha / rank * B @ A``.
        dropout: dropout on the adapters' input, in [0, 1).
        patterns: regexes (``re.search``) of the Linear layer names to adapt; default: inside the transformer blocks.
        head: modules of the model trained in full (and saved with the adapters); None: the task head found
            from the model (its children outside the base model, e.g. ``classifier``); ``[]``: none. Add any layer
            the pretrained directory lacks (``bert.pooler`` of a masked-LM checkpoint), which would otherwise stay
            frozen at its random initialization.
        quantize_base: None (LoRA) or ``"nf4"`` (QLoRA).
        compute_dtype: QLoRA's compute dtype: ``"auto"``, ``"bf16"`` or ``"fp32"`` (``lit-llm export`` of a
            checkpoint uses the checkpoint's).
        export_artifact: write the adapters at fit end.
        artifact_dir: where; None = ``<default_root_dir>/export-lora``. Must be new or empty.
        export_merged: also write the merged model at fit end.
        merged_dir: where; None = ``<default_root_dir>/export-lora-merged``. Must be new or empty.
        model_attr: attribute of the LightningModule that holds the model.

    Raises:
        InvalidArgumentError: a bad rank / alpha / dropout / quantize_base; at fit start, patterns matching no
            Linear layer (the message lists those that exist), a resumed base that differs from the checkpoint's,
            QLoRA with FSDP2.
        QuantizationUnavailableError: QLoRA where bitsandbytes 4-bit cannot run.
        AttributeError: no model at ``model_attr``; at train start, an optimizer without the adapters.
        FileExistsError: at fit start, an artifact directory that already holds files.

    Example::
        trainer = Trainer(callbacks=[LoRA(rank=8, alpha=16, export_merged=True)])
        trainer = Trainer(callbacks=[LoRA(rank=16, quantize_base="nf4")])  # QLoRA
    """

    def __init__(
        self,
        rank: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        patterns: list[str] | None = None,
        head: list[str] | None = None,
        quantize_base: Literal["nf4"] | None = None,
        compute_dtype: Literal["auto", "bf16", "fp32"] = "auto",
        export_artifact: bool = True,
        artifact_dir: str | None = None,
        export_merged: bool = False,
        merged_dir: str | None = None,
        model_attr: str = "model",
    ) -> None:
        LoraSpec(targets=[], rank=rank, alpha=alpha, dropout=dropout, quantize_base=quantize_base)  # checks values
        if compute_dtype not in ("auto", "bf16", "fp32"):
            raise InvalidArgumentError(f"LoRA(compute_dtype={compute_dtype!r}): must be 'auto', 'bf16' or 'fp32'.")
        self.compute_dtype = compute_dtype
        self.rank, self.alpha, self.dropout = rank, alpha, dropout
        self.patterns = patterns
        self.head = head
        self.quantize_base = quantize_base
        self.export_artifact = export_artifact
        self.artifact_dir = artifact_dir
        self.export_merged = export_merged
        self.merged_dir = merged_dir
        self.model_attr = model_attr
        self.spec: LoraSpec | None = None
        self.fingerprint: list[float] | None = None
        self.artifact_path: Path | None = None  # the adapters, once written
        self.merged_path: Path | None = None  # the merged model, once written
        self.trainable_parameters = 0
        self.total_parameters = 0
        self._trainable: set[str] = set()  # LightningModule-level names of the weights a checkpoint keeps
        self._adapted: nn.Module | None = None  # the model with adapters, kept once the module holds the merged one
        self._hooked: set[int] = set()
        self._fingerprint_now: list[float] | None = None  # of the base this run adapted
        self._merged_load = False  # set by the load pre-hook for the post-hook, after the fit-end merge
        self._resume_suffix = ""  # ".resume<n>" for the default directories of a resumed run that had finished
        self._fit_ended = False

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(rank=self.rank, model_attr=self.model_attr)

    # ------------------------------------------------------------------------------------------------ set-up
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self.quantize_base:
            from lightning.pytorch.strategies import ModelParallelStrategy

            if isinstance(trainer.strategy, ModelParallelStrategy):
                raise InvalidArgumentError(
                    "LoRA(quantize_base='nf4') cannot run under FSDP2 (bitsandbytes 4-bit weights are not sharded); "
                    "use the ddp strategy for QLoRA, or quantize_base: null for LoRA with FSDP2."
                )
            check_4bit_available(trainer.strategy.root_device)  # fail before the model is built
        self._register_load_hooks(pl_module)
        # Lightning runs callbacks' setup before the module's (where our modules build the HF model), then the
        # module's configure_model, then restores a checkpoint, shards (FSDP2) and builds the optimizer. Adapting
        # right after configure_model is the one point where the model exists and none of those has happened, so
        # this instance's configure_model is wrapped (and unwrapped at teardown), as LowRankFactorization does.
        original = pl_module.configure_model

        def configure_model() -> None:
            original()
            self._adapt(pl_module)

        pl_module.configure_model = configure_model  # type: ignore[method-assign]

    def _model(self, pl_module: pl.LightningModule) -> nn.Module:
        model = getattr(pl_module, self.model_attr, None)
        if not isinstance(model, nn.Module):
            found = "nothing" if model is None else f"a {type(model).__name__}"
            raise AttributeError(
                f"LoRA adapts the model at {type(pl_module).__name__}.{self.model_attr}, which holds {found}; keep "
                "the model (e.g. the transformers model) there or pass model_attr='<attribute>'."
            )
        return model

    def _adapt(self, pl_module: pl.LightningModule) -> None:
        require_peft()
        from peft.tuners.lora import LoraLayer

        model = self._model(pl_module)
        if any(isinstance(m, LoraLayer) for m in model.modules()):
            return  # already adapted (a second configure_model call)
        head = find_head(model) if self.head is None else list(self.head)
        spec = LoraSpec(
            targets=find_lora_targets(model, self.patterns), rank=self.rank, alpha=self.alpha,
            dropout=self.dropout, head=head, quantize_base=self.quantize_base,
            compute_dtype=self._compute_dtype(model),
        )
        fingerprint = base_fingerprint(model, spec)
        apply_lora(model, spec)
        self.spec = spec
        self._fingerprint_now = self.fingerprint = fingerprint  # a checkpoint's is compared in load_state_dict
        self._adapted = None
        self._trainable = trainable_parameter_names(model, prefix=f"{self.model_attr}.")
        self.trainable_parameters, self.total_parameters = parameter_counts(model)
        kind = f"QLoRA (NF4 base, {spec.compute_dtype} compute)" if self.quantize_base else "LoRA"
        rank_zero_info(
            f"{kind}: adapters of rank {self.rank} on {len(spec.targets)} Linear layers, head {head or 'none'}; "
            f"{self.trainable_parameters:,} of {self.total_parameters:,} parameters trainable "
            f"({100 * self.trainable_parameters / max(self.total_parameters, 1):.2f}%)."
        )

    def _compute_dtype(self, model: nn.Module) -> str:
        if not self.quantize_base:  # plain LoRA keeps the model's dtypes: nothing to decide (or to read)
            return LoraSpec.compute_dtype
        if self.compute_dtype != "auto":
            return {"bf16": "bfloat16", "fp32": "float32"}[self.compute_dtype]
        return qlora_compute_dtype(next(model.parameters()).device)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_ended = False
        if self.spec is None:  # a drop-in never runs and does nothing
            raise RuntimeError("LoRA: the model was not adapted at configure_model; was the callback's setup skipped?")
        self._resume_suffix = ""
        if trainer.ckpt_path is not None:  # a resumed run that had finished writes beside its artifacts, never over
            suffix, n = "", 0
            while any(_holds_files(t) for t in (self._artifact_target(trainer, suffix),
                                                self._merged_target(trainer, suffix))):
                n += 1
                suffix = f".resume{n}"
            self._resume_suffix = suffix
        for wanted, target in ((self.export_artifact, self._artifact_target(trainer)),
                               (self.export_merged, self._merged_target(trainer))):
            if wanted:
                check_artifact_dir(target, "LoRA")
        if self.export_merged:
            hf_model_of(pl_module, self.model_attr, "LoRA")

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimized = {id(p) for opt in trainer.optimizers for group in opt.param_groups for p in group["params"]}
        adapters = [p for n, p in pl_module.named_parameters() if "lora_" in n]
        if adapters and not any(id(p) in optimized for p in adapters):
            raise AttributeError(
                f"LoRA: the optimizer of {type(pl_module).__name__} holds none of the adapters, so they would never "
                "train. Build it in configure_optimizers from self.parameters() (or self.model.parameters()), not "
                "from a list made in __init__."
            )

    def _artifact_target(self, trainer: pl.Trainer, suffix: str | None = None) -> Path:
        if self.artifact_dir:
            return Path(self.artifact_dir)
        return Path(trainer.default_root_dir) / f"export-lora{self._resume_suffix if suffix is None else suffix}"

    def _merged_target(self, trainer: pl.Trainer, suffix: str | None = None) -> Path:
        if self.merged_dir:
            return Path(self.merged_dir)
        name = f"export-lora-merged{self._resume_suffix if suffix is None else suffix}"
        return Path(trainer.default_root_dir) / name

    # ------------------------------------------------------------------------------------------------ checkpoints
    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if not self._trainable or "state_dict" not in checkpoint:
            return
        state = checkpoint["state_dict"]
        prefix = f"{self.model_attr}."
        # What the module keeps beside the adapted model (a head of its own, e.g. MaskedLanguageModel's
        # SentencePairHead) is not LoRA's to drop: saved whole
        beside = {k: v for k, v in state.items() if not k.startswith(prefix)}
        if self._adapted is not None:  # saved after the fit-end merge: the adapters kept aside
            checkpoint["state_dict"] = {
                prefix + k: v for k, v in self._adapted.state_dict().items() if prefix + k in self._trainable
            } | beside
        elif any(hasattr(v, "full_tensor") for v in state.values()):
            # A sharded (FSDP2) checkpoint: torch.distributed.checkpoint restores only complete module states, so
            # it keeps the frozen base too (one shard per rank, written in parallel).
            return
        else:
            checkpoint["state_dict"] = {k: v for k, v in state.items() if k in self._trainable} | beside

    def _register_load_hooks(self, pl_module: pl.LightningModule) -> None:
        if id(pl_module) in self._hooked:
            return
        self._hooked.add(id(pl_module))
        pl_module.register_load_state_dict_pre_hook(self._route_adapter_load)
        pl_module.register_load_state_dict_post_hook(self._forgive_frozen)

    def _route_adapter_load(self, module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """After the fit-end merge: an adapter state (this run's checkpoint) is loaded into the adapted model kept
        aside and merged again into the module's model, so e.g. a restore of the best checkpoint takes effect."""
        if self._adapted is None or prefix:
            return
        keys = [k for k in state_dict if k in self._trainable]
        if not keys:
            return
        start = len(self.model_attr) + 1
        self._adapted.load_state_dict({k[start:]: state_dict.pop(k) for k in keys}, strict=False)
        merged = merge_lora(copy.deepcopy(self._adapted))
        with torch.no_grad():
            target = self._model(module)  # type: ignore[arg-type]
            new = merged.state_dict()
            for name, value in target.state_dict(keep_vars=True).items():
                value.data.copy_(new[name])
        self._merged_load = True

    def _forgive_frozen(self, module: nn.Module, incompatible: Any) -> None:
        """An adapter-only state dict leaves the frozen base weights missing: that is expected, not an error."""
        if self._adapted is not None and self._merged_load:
            self._merged_load = False
            prefix = f"{self.model_attr}."
            incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if not k.startswith(prefix)]
            return
        if self._trainable and not any(k in self._trainable for k in incompatible.missing_keys):
            incompatible.missing_keys[:] = [
                k for k in incompatible.missing_keys if not k.startswith(f"{self.model_attr}.")
            ]

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": LORA_STATE_FORMAT,
            "spec": self.spec.to_dict() if self.spec else None,
            "model_attr": self.model_attr,
            "base_fingerprint": list(self.fingerprint) if self.fingerprint else None,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("spec")
        # The compute dtype may differ (a run resumed on a machine with other bf16 hardware): the load casts.
        if saved and self.spec is not None and (
            replace(LoraSpec.from_dict(saved), compute_dtype=self.spec.compute_dtype) != self.spec
        ):
            raise InvalidArgumentError(
                f"LoRA: the checkpoint's adapters ({_describe(saved)}) differ from this run's "
                f"({_describe(self.spec.to_dict())}); resume with the same rank, alpha, patterns, head and "
                "quantize_base."
            )
        print_ = state_dict.get("base_fingerprint")
        now = self._fingerprint_now
        if print_ and now and not _close(print_, now):
            raise InvalidArgumentError(
                "LoRA: the base model of this run differs from the one the checkpoint's adapters were trained on "
                f"(weight sums {now} vs {print_}); a LoRA checkpoint holds only the adapters, so resume from the same "
                "pretrained model with the same seed_everything seed. If the pretrained directory lacks a layer "
                "(transformers then initializes it at random, e.g. a pooler), train and save it with the adapters: "
                "head: [classifier, bert.pooler]."
            )
        self.fingerprint = print_ or self.fingerprint

    # ------------------------------------------------------------------------------------------------ fit end
    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Runs before the module's on_fit_end (where ours restore the best checkpoint and export): the module gets
        # a plain merged model, the adapted one is kept to fold a later adapter load in (_route_adapter_load).
        model = self._model(pl_module)
        if self.spec is None or self._adapted is not None:
            return
        sharded = gathered_state_dict(model)  # FSDP2: a collective on every rank
        if sharded is None:
            merged = merge_lora(copy.deepcopy(model))
            self._adapted = model
        else:  # a fresh unsharded copy of the model, adapted the same way, given the gathered weights
            hf_model = hf_model_of(pl_module, self.model_attr, "LoRA under FSDP2")
            fresh = type(hf_model)(hf_model.config)
            apply_lora(fresh, self.spec)
            fresh.load_state_dict(sharded)
            merged = merge_lora(copy.deepcopy(fresh))
            self._adapted = fresh
        merged.train(model.training)
        setattr(pl_module, self.model_attr, merged)
        self._fit_ended = True

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if "configure_model" in pl_module.__dict__:
            del pl_module.configure_model
        if not self._fit_ended:
            return
        self._fit_ended = False
        # After every on_fit_end: the weights the module ends the fit with (ours restore the best checkpoint).
        if self.export_artifact and trainer.is_global_zero and self._adapted is not None and self.spec is not None:
            self.artifact_path = save_adapters(
                self._adapted, check_artifact_dir(self._artifact_target(trainer), "LoRA"), self.spec,
                module_tokenizer(pl_module), state_dict=None,
            )
            rank_zero_info(
                f"LoRA: wrote the adapters to {self.artifact_path}; load them with "
                "peft.PeftModel.from_pretrained(base_model, path)."
            )
        if self.export_merged:
            path = write_module_artifact(pl_module, self.model_attr, "LoRA", self._merged_target(trainer),
                                         _save_merged, False, trainer.is_global_zero)
            if path is not None:
                self.merged_path = path
                rank_zero_info(f"LoRA: wrote the merged model to {path}; transformers' from_pretrained and "
                               "pipeline() load it.")

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if "configure_model" in pl_module.__dict__:  # teardown is not called after a failed fit
            del pl_module.configure_model


def _save_merged(model: Any, out: Path, tokenizer: Any, onnx: bool, state_dict: Any = None) -> Path:
    return export_pretrained(model, tokenizer, out, state_dict=state_dict)


def _holds_files(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _describe(spec: dict[str, Any]) -> str:
    return (f"rank {spec['rank']}, alpha {spec['alpha']}, {len(spec['targets'])} targets, head {spec['head']}, "
            f"quantize_base {spec['quantize_base']}")


def _close(a: list[float], b: list[float]) -> bool:
    return all(abs(x - y) <= 1e-6 * max(1.0, abs(x), abs(y)) for x, y in zip(a, b, strict=True))

