"""A frozen teacher whose soft targets (and hidden states) are mixed into the student's training loss."""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from typing_extensions import override

from lit_llm.distillation import attach_objective, detach_objective, find_blocks, hidden_state_loss, kd_loss
from lit_llm.hf import build_config, load_model

__all__ = ["DistillationTeacher", "load_teacher"]

_AUTO_BY_SUFFIX = (
    ("ForSequenceClassification", "AutoModelForSequenceClassification"),
    ("ForTokenClassification", "AutoModelForTokenClassification"),
    ("ForMaskedLM", "AutoModelForMaskedLM"),
    ("ForCausalLM", "AutoModelForCausalLM"),
    ("LMHeadModel", "AutoModelForCausalLM"),
    ("ForQuestionAnswering", "AutoModelForQuestionAnswering"),
)
# Globals a Lightning checkpoint's hyper_parameters commonly hold (the optimizer class the CLI gave, a partial);
# unpickling them only references a class, it runs no code of the file.
_ALLOWED_GLOBAL_PREFIXES = ("torch.optim.", "functools.partial", "builtins.")
_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def auto_class_for(model: nn.Module) -> Any:
    """The ``transformers`` Auto class matching an HF model's head (``BertForMaskedLM`` -> ``AutoModelForMaskedLM``)."""
    import transformers

    name = type(model).__name__
    for suffix, auto in _AUTO_BY_SUFFIX:
        if name.endswith(suffix):
            return getattr(transformers, auto)
    return transformers.AutoModel


def _load_checkpoint(path: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with clear errors; never runs pickled code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        if not unsafe or not all(g.startswith(_ALLOWED_GLOBAL_PREFIXES) for g in unsafe):
            raise ValueError(
                f"teacher checkpoint {str(path)!r} is not a plain model checkpoint: it needs unsafe globals {unsafe} "
                "to load, and lit-llm loads with weights_only=True. Export the teacher with save_pretrained (our "
                "modules write <run>/export) and pass that directory."
            ) from None
        allowed = [getattr(importlib.import_module(g.rpartition(".")[0]), g.rpartition(".")[2]) for g in unsafe]
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # the weights-only unpickler fails in many ways on a file that is not a checkpoint
        raise ValueError(
            f"teacher checkpoint {str(path)!r} could not be read as a torch checkpoint ({type(err).__name__}: "
            f"{str(err)[:200]}); give a Lightning .ckpt, or an HF directory saved with save_pretrained."
        ) from None


def load_teacher(
    teacher: str, auto_cls: Any, architecture: str | dict[str, Any] | None = None, prefix: str = "model."
) -> nn.Module:
    """Load a teacher from an HF directory / hub id, or from a lit-llm (Lightning) ``.ckpt``.

    For a ``.ckpt`` the architecture comes from ``architecture`` (an HF dir / config dict) or from the checkpoint's
    ``hyper_parameters["model"]``; the weights are the ``state_dict`` entries under ``prefix``.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: a file that is not a model checkpoint, or no architecture to build.
    """
    path = Path(teacher).expanduser()
    if teacher.endswith((".ckpt", ".pt", ".pth", ".bin")) or path.is_file():
        if not path.exists():
            raise FileNotFoundError(f"teacher checkpoint {teacher!r} does not exist; check the path.")
        ckpt = _load_checkpoint(path)
        state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
        if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(
                f"teacher checkpoint {teacher!r} holds no model weights (no 'state_dict' of tensors); give a "
                "Lightning .ckpt of a lit-llm module or an HF directory."
            )
        hparams = ckpt.get("hyper_parameters") or {}
        spec = architecture or hparams.get("model")
        if spec is None:
            raise ValueError(
                f"teacher checkpoint {teacher!r} does not say which architecture it holds (no hyper_parameters "
                "'model'); pass teacher_architecture=<HF dir or config dict>."
            )
        weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        overrides: dict[str, Any] = {}
        for key, value in weights.items():
            if key.endswith(("classifier.weight", "score.weight")) and "ForSequenceClassification" in auto_cls.__name__:
                overrides["num_labels"] = value.shape[0]
        labels = hparams.get("labels")
        if isinstance(labels, (list, tuple)) and len(labels) == overrides.get("num_labels"):
            # Our modules save their class names; without them the label check would see LABEL_0, LABEL_1...
            overrides["id2label"] = dict(enumerate(labels))
            overrides["label2id"] = {name: i for i, name in enumerate(labels)}
        model = load_model(auto_cls, spec, **overrides)
        expected = model.state_dict()
        for key, value in weights.items():
            if key in expected and tuple(value.shape) != tuple(expected[key].shape):
                raise ValueError(
                    f"teacher checkpoint {teacher!r} does not match the architecture {spec!r}: {key} is "
                    f"{tuple(value.shape)} in the checkpoint and {tuple(expected[key].shape)} in the architecture "
                    "(resized embeddings?). Pass teacher_architecture=<the teacher's own HF dir or config dict>."
                )
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if unexpected or len(missing) == len(expected):
            raise ValueError(
                f"teacher checkpoint {teacher!r} does not match the architecture {spec!r}: "
                f"{len(missing)} missing and {len(unexpected)} unexpected keys (e.g. {(unexpected or missing)[:3]})."
            )
        return model
    _check_head(teacher, auto_cls)
    return load_model(auto_cls, teacher)


def _check_head(teacher: str, auto_cls: Any) -> None:
    """Refuse an HF teacher saved with another head: loading it would give a randomly initialized head."""
    suffix = next((sfx for sfx, auto in _AUTO_BY_SUFFIX if auto == getattr(auto_cls, "__name__", "")), None)
    architectures = getattr(build_config(teacher), "architectures", None) or []
    if suffix and architectures and not any(a.endswith(suffix) for a in architectures):
        raise ValueError(
            f"teacher {teacher!r} is a {architectures[0]}, but the student is a *{suffix} model: its {suffix} head "
            "would be randomly initialized. Give a teacher trained for the student's task (for a lit-llm run, its "
            "export/ directory)."
        )


class DistillationTeacher(Callback):
    """Distill a frozen teacher into the module being trained (logits, optionally hidden states).

    Before each training batch the teacher runs on the batch (no grad, eval mode, on the student's device and
    under the trainer's precision); the module's ``training_step`` then mixes the result into its loss through
    :func:`lit_llm.distillation.apply_training_objectives` (one line; our modules have it)::

        loss = apply_training_objectives(self, batch, outputs, outputs.loss)

    training loss = ``alpha * T^2 * KL(teacher || student) + (1 - alpha) * task + hidden_weight * hidden MSE``.

    The teacher lives on this callback, never on the module: it is not trained, not in the student's optimizer
    and not in the student's checkpoint. Hidden-state distillation matches student block ``s`` to teacher block
    ``t`` for each ``s: t`` in ``hidden_layers`` (student outputs captured with forward hooks), through a learned
    Linear when the widths differ; the projection is trained with the student (added to its first optimizer) and
    saved in this callback's state.

    Contract for any LightningModule: the HF student is ``getattr(module, student_attr)`` (``model`` in ours),
    batches are dicts with ``input_ids`` (and ``attention_mask`` ...), and ``training_step`` has the line above.

    Args:
        teacher: an HF directory or hub id, or a Lightning ``.ckpt`` of a lit-llm module.
        temperature: softmax temperature T > 0.
        alpha: weight of the distillation term in [0, 1]; ``1 - alpha`` weighs the task loss.
        hidden_layers: optional map student block -> teacher block, e.g. ``{0: 1, 1: 3, 2: 5}``.
        hidden_weight: weight of the hidden-state MSE.
        teacher_architecture: for a ``.ckpt`` teacher without ``hyper_parameters['model']``: its HF dir / config.
        student_attr: attribute of the module holding the HF student.

    Raises:
        ValueError: a bad temperature / alpha / weight; at fit start: a teacher checkpoint that is not a model, a
            teacher whose vocabulary or label set differs from the student's, a module without ``student_attr``.
        FileNotFoundError: the teacher path does not exist.

    Example::
        trainer = Trainer(callbacks=[DistillationTeacher(teacher="runs/teacher/export", temperature=2.0, alpha=0.5)])
    """

    def __init__(
        self,
        teacher: str,
        temperature: float = 2.0,
        alpha: float = 0.5,
        hidden_layers: dict[int, int] | None = None,
        hidden_weight: float = 1.0,
        teacher_architecture: str | dict[str, Any] | None = None,
        student_attr: str = "model",
    ) -> None:
        if not temperature > 0:
            raise ValueError(f"DistillationTeacher(temperature={temperature!r}): must be > 0, e.g. 2.0.")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"DistillationTeacher(alpha={alpha!r}): must be in [0, 1] (weight of the KD term).")
        if hidden_weight < 0:
            raise ValueError(f"DistillationTeacher(hidden_weight={hidden_weight!r}): must be >= 0.")
        self.teacher_spec = str(teacher)
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.hidden_layers = {int(k): int(v) for k, v in (hidden_layers or {}).items()}
        self.hidden_weight = float(hidden_weight)
        self.teacher_architecture = teacher_architecture
        self.student_attr = student_attr
        self.teacher: nn.Module | None = None
        self.projections = nn.ModuleDict()
        self._teacher_out: Any = None
        self._student_hidden: dict[int, torch.Tensor] = {}
        self._hooks: list[Any] = []
        self._pending_projection_state: dict[str, Any] | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(teacher=self.teacher_spec)

    def _student(self, pl_module: pl.LightningModule) -> nn.Module:
        student = getattr(pl_module, self.student_attr, None)
        if not isinstance(student, nn.Module):
            raise ValueError(
                f"DistillationTeacher: {type(pl_module).__name__} has no attribute {self.student_attr!r} holding the "
                "HF student model; set student_attr= to the attribute that does."
            )
        return student

    def _load(self, pl_module: pl.LightningModule) -> None:
        # Called at fit start, not in setup: callbacks' setup runs before the module's, where ours build the model.
        if self.teacher is not None:
            return
        student = self._student(pl_module)
        teacher = load_teacher(self.teacher_spec, auto_class_for(student), self.teacher_architecture)
        self._check_compatible(student, teacher)
        teacher.eval().requires_grad_(False)
        self.teacher = teacher
        if self.hidden_layers:
            s_width = _width(student)
            t_width = _width(teacher)
            for s_idx in self.hidden_layers:
                if s_width != t_width:
                    self.projections[str(s_idx)] = nn.Linear(s_width, t_width)
            if self._pending_projection_state:
                self.projections.load_state_dict(self._pending_projection_state)
        rank_zero_info(f"DistillationTeacher: teacher {type(teacher).__name__} from {self.teacher_spec!r}.")

    def _check_compatible(self, student: nn.Module, teacher: nn.Module) -> None:
        s_cfg, t_cfg = getattr(student, "config", None), getattr(teacher, "config", None)
        if s_cfg is None or t_cfg is None:
            return
        if getattr(s_cfg, "vocab_size", None) != getattr(t_cfg, "vocab_size", None):
            raise ValueError(
                f"DistillationTeacher: teacher {self.teacher_spec!r} has vocab_size {t_cfg.vocab_size}, the student "
                f"{s_cfg.vocab_size}; distillation needs the same tokenizer. Use a teacher with the student's "
                "vocabulary."
            )
        if "ForSequenceClassification" in type(student).__name__ or "ForTokenClassification" in type(student).__name__:
            s_labels, t_labels = dict(s_cfg.id2label), dict(t_cfg.id2label)
            if s_cfg.num_labels != t_cfg.num_labels or s_labels != t_labels:
                raise ValueError(
                    f"DistillationTeacher: teacher labels {t_labels} differ from the student's {s_labels}; the teacher "
                    "must be trained on the same label set (same order)."
                )
        if self.hidden_layers:
            t_layers, s_layers = len(find_blocks(teacher)[1]), len(find_blocks(student)[1])
            bad = {s: t for s, t in self.hidden_layers.items() if not (0 <= s < s_layers and 0 <= t < t_layers)}
            if bad:
                raise ValueError(
                    f"DistillationTeacher(hidden_layers={self.hidden_layers}): {bad} out of range; the student has "
                    f"{s_layers} blocks and the teacher {t_layers} (0-based)."
                )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._load(pl_module)
        assert self.teacher is not None
        dtype = next((p.dtype for p in pl_module.parameters() if p.is_floating_point()), torch.float32)
        self.teacher.to(device=pl_module.device, dtype=dtype)
        self.projections.to(device=pl_module.device)
        if len(self.projections) and trainer.optimizers:
            optimizer = trainer.optimizers[0]
            ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
            params = [p for p in self.projections.parameters() if id(p) not in ids]
            if params:
                optimizer.add_param_group({"params": params, "weight_decay": 0.0})
        if self.hidden_layers:
            _, blocks = find_blocks(self._student(pl_module))
            for s_idx in self.hidden_layers:
                self._hooks.append(blocks[s_idx].register_forward_hook(self._capture(s_idx)))
        attach_objective(pl_module, self)

    def _capture(self, idx: int) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self._student_hidden[idx] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        assert self.teacher is not None
        inputs = {k: v for k, v in batch.items() if k in _INPUT_KEYS}
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            self._teacher_out = self.teacher(**inputs, output_hidden_states=bool(self.hidden_layers))

    def __call__(self, module: nn.Module, batch: Any, outputs: Any, loss: torch.Tensor) -> torch.Tensor:
        """The training objective: called by ``apply_training_objectives`` inside ``training_step``."""
        if self._teacher_out is None or not module.training:
            return loss
        mask = batch.get("attention_mask") if outputs.logits.dim() == 3 else None
        kd = kd_loss(outputs.logits, self._teacher_out.logits, self.temperature, mask)
        total = self.alpha * kd + (1.0 - self.alpha) * loss
        # Log only inside a trainer's training_step (a bare call, e.g. from a notebook, has nothing to log to).
        log = getattr(module, "log", None) if getattr(module, "_trainer", None) is not None else None
        if self.hidden_layers:
            hidden = sum(
                hidden_state_loss(
                    self._student_hidden[s], self._teacher_out.hidden_states[t + 1], self.projections[str(s)]
                    if str(s) in self.projections else None,
                )
                for s, t in self.hidden_layers.items()
            )
            total = total + self.hidden_weight * hidden
            if log:
                log("train/distill_hidden", hidden.detach(), on_step=True, on_epoch=False)
        if log:
            log("train/distill_kd", kd.detach(), on_step=True, on_epoch=False)
        self._teacher_out = None
        self._student_hidden.clear()
        return total

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        detach_objective(pl_module, self)
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"projections": {k: v.detach().cpu() for k, v in self.projections.state_dict().items()}}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_projection_state = state_dict.get("projections") or None
        if self._pending_projection_state and len(self.projections):
            self.projections.load_state_dict(self._pending_projection_state)


def _width(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    for key in ("hidden_size", "n_embd", "d_model"):
        if isinstance(getattr(config, key, None), int):
            return int(getattr(config, key))
    raise ValueError(f"cannot read the hidden width of {type(model).__name__} (no config.hidden_size).")
