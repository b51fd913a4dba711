"""A frozen teacher whose soft targets (and hidden states) are mixed into the student's training loss."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from typing_extensions import override

from lit_llm.training.checkpointing import CheckpointError, load_checkpoint_file
from lit_llm.compression.distillation import (
    attach_objective,
    detach_objective,
    distillation_targets,
    hidden_state_loss,
    kd_loss,
    select_targets,
)
from lit_llm.hf import build_config, config_size, find_blocks, load_model, load_tokenizer

__all__ = ["DistillationTeacher", "load_teacher"]

_AUTO_BY_SUFFIX = (
    ("ForSequenceClassification", "AutoModelForSequenceClassification"),
    ("ForTokenClassification", "AutoModelForTokenClassification"),
    ("ForMaskedLM", "AutoModelForMaskedLM"),
    ("ForCausalLM", "AutoModelForCausalLM"),
    ("LMHeadModel", "AutoModelForCausalLM"),
    ("ForQuestionAnswering", "AutoModelForQuestionAnswering"),
    ("ForPreTraining", "AutoModelForPreTraining"),
)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")
_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def auto_class_for(model: nn.Module) -> Any:
    """The ``transformers`` Auto class matching an HF model's head (``BertForMaskedLM`` -> ``AutoModelForMaskedLM``)."""
    import transformers

    name = type(model).__name__
    for suffix, auto in _AUTO_BY_SUFFIX:
        if name.endswith(suffix):
            return getattr(transformers, auto)
    return transformers.AutoModel


def load_teacher(
    teacher: str, auto_cls: Any, architecture: str | dict[str, Any] | None = None, prefix: str = "model."
) -> nn.Module:
    """Load a teacher from an HF directory / hub id, or from a lit-llm (Lightning) ``.ckpt``.

    For a ``.ckpt`` the architecture comes from ``architecture`` (an HF dir / config dict) or from the checkpoint's
    ``hyper_parameters["model"]``; the weights are the ``state_dict`` entries under ``prefix``. The file is read
    by :func:`lit_llm.training.checkpointing.load_checkpoint_file` (``weights_only=True``): a checkpoint holding
    Python objects is refused, never unpickled.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: a file that is not a model checkpoint (:class:`~lit_llm.training.checkpointing.CheckpointError`), or
            no architecture to build.

    Example::
        teacher = load_teacher("runs/teacher/export", AutoModelForSequenceClassification)
    """
    return _load_teacher(teacher, auto_cls, architecture, prefix)[0]


def _load_teacher(
    teacher: str, auto_cls: Any, architecture: str | dict[str, Any] | None, prefix: str
) -> tuple[nn.Module, dict[str, Any]]:
    """``(teacher model, the checkpoint's hyper_parameters or {})``."""
    path = Path(teacher).expanduser()
    if teacher.endswith((".ckpt", ".pt", ".pth", ".bin")) or path.is_file():
        if not path.exists():
            raise FileNotFoundError(f"teacher checkpoint {teacher!r} does not exist; check the path.")
        try:
            ckpt = load_checkpoint_file(path)
        except CheckpointError as err:
            raise CheckpointError(
                f"teacher checkpoint: {err} For a teacher, an HF directory saved with save_pretrained (our modules "
                "write <run>/export) works too."
            ) from None
        except (IndexError, KeyError) as err:  # the weights-only unpickler on a file that is no pickle at all
            raise CheckpointError(
                f"teacher checkpoint: {path} is not a readable checkpoint ({type(err).__name__}: {err}); give a "
                "Lightning .ckpt, or an HF directory saved with save_pretrained (our modules write <run>/export)."
            ) from None
        state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
        if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(
                f"teacher checkpoint {teacher!r} holds no model weights (no 'state_dict' of tensors); give a "
                "Lightning .ckpt of a lit-llm module or an HF directory."
            )
        hparams = ckpt.get("hyper_parameters") or {}
        hparams = hparams if isinstance(hparams, dict) else {}
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
        return model, hparams
    _check_head(teacher, auto_cls)
    return load_model(auto_cls, teacher), {}


def _tokenizer_dir(candidate: Any) -> str | None:
    """``candidate`` if it is a local directory holding tokenizer files (never a hub lookup), else None."""
    if not isinstance(candidate, str):
        return None
    path = Path(candidate).expanduser()
    return str(path) if path.is_dir() and any((path / f).exists() for f in _TOKENIZER_FILES) else None


def _logits(outputs: Any) -> torch.Tensor | None:
    """The logits of an HF output (``prediction_logits`` for a pre-training head), or None."""
    for key in ("logits", "prediction_logits"):
        value = outputs.get(key) if isinstance(outputs, Mapping) else getattr(outputs, key, None)
        if isinstance(value, torch.Tensor):
            return value
    return None


def _check_head(teacher: str, auto_cls: Any) -> None:
    """Refuse an HF teacher saved with another head: loading it would give a randomly initialized head."""
    # Every head name of the Auto class (a causal LM is *ForCausalLM or *LMHeadModel).
    suffixes = tuple(sfx for sfx, auto in _AUTO_BY_SUFFIX if auto == getattr(auto_cls, "__name__", ""))
    suffix = suffixes[0] if suffixes else None
    architectures = getattr(build_config(teacher), "architectures", None) or []
    if suffix and architectures and not any(a.endswith(suffixes) for a in architectures):
        raise ValueError(
            f"teacher {teacher!r} is a {architectures[0]}, but the student is a *{suffix} model: its {suffix} head "
            "would be randomly initialized. Give a teacher trained for the student's task (for a lit-llm run, its "
            "export/ directory)."
        )


@dataclass
class _Step:
    """What one training step of the student showed the callback."""

    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    student_out: Any = None
    teacher_out: Any = None
    hidden: dict[int, torch.Tensor] = field(default_factory=dict)
    applied: bool = False  # the module passed its loss through apply_training_objectives itself


class DistillationTeacher(Callback):
    """Distill a frozen teacher into the module being trained (logits, optionally hidden states): a drop-in.

    training loss = ``alpha * T^2 * KL(teacher || student) + (1 - alpha) * task + hidden_weight * hidden MSE``.

    How it reaches the loss: at fit start the callback puts a forward hook on the HF student
    (``getattr(module, student_attr)``) and wraps the module's ``training_step``. Each time the student runs
    forward inside ``training_step`` (with grad), the teacher runs on the same inputs (``input_ids``,
    ``attention_mask``, ``token_type_ids``, ``position_ids``; no grad, eval mode, under the trainer's precision).
    When ``training_step`` returns its loss (a tensor, or a dict with ``"loss"``), the wrapper returns the mixed
    loss instead and logs ``train/distill_kd`` (and ``train/distill_hidden``). Nothing in ``training_step`` has to
    change; at fit end the module's own ``training_step`` is back. It works with gradient accumulation (every
    micro-batch is distilled) and under DDP (Lightning calls the module's ``training_step`` attribute there too).

    Which positions: logits ``(B, C)`` (a classifier) are distilled per example; token logits ``(B, T, V)`` on
    every non-padding position, unless the module marks its targets with
    :func:`lit_llm.compression.mark_distillation_targets`. Our :class:`~lit_llm.modules.MaskedLanguageModel` marks
    the masked positions (DistilBERT; the teacher sees the same masked input and its logits are taken at the
    positions where the student's sparse LM head ran) and :class:`~lit_llm.modules.CausalLanguageModel` every
    position that predicts a non-padding next token; both return a token *sum* (exact token loss), and the KD term
    is then a sum over the same targets, so the step's normalization treats both terms alike.

    A module that still passes its loss through :func:`lit_llm.compression.distillation.apply_training_objectives` (the
    contract of earlier versions; needed under manual optimization, before ``manual_backward``) gets the term once,
    there.

    The teacher lives on this callback, never on the module: it is not trained, not in the student's optimizer
    and not in the student's checkpoint. Hidden-state distillation matches student block ``s`` to teacher block
    ``t`` for each ``s: t`` in ``hidden_layers``, through a learned Linear when the widths differ; the projection
    is trained with the student (added to its first optimizer) and saved in this callback's state.

    Contract for any LightningModule: the HF student is ``getattr(module, student_attr)`` (``model`` in ours) and
    is called with ``input_ids`` in ``training_step``; ``training_step`` returns its loss (automatic optimization)
    or calls ``apply_training_objectives`` (manual optimization). Otherwise the first step raises, saying why.

    Args:
        teacher: an HF directory or hub id, or a Lightning ``.ckpt`` of a lit-llm module.
        temperature: softmax temperature T > 0.
        alpha: weight of the distillation term in [0, 1]; ``1 - alpha`` weighs the task loss.
        hidden_layers: optional map student block -> teacher block, e.g. ``{0: 1, 1: 3, 2: 5}``.
        hidden_weight: weight of the hidden-state MSE.
        teacher_architecture: for a ``.ckpt`` teacher without ``hyper_parameters['model']``: its HF dir / config.
        teacher_tokenizer: the teacher's tokenizer directory, compared token by token with the student's (the
            module's ``tokenizer``, else the datamodule's). Default: the teacher's directory, or for a ``.ckpt``
            its ``hyper_parameters`` ``tokenizer`` / ``model`` directory, when it holds tokenizer files.
        student_attr: attribute of the module holding the HF student.

    Raises:
        ValueError: a bad temperature / alpha / weight; at fit start: a teacher checkpoint that is not a model (or
            holds Python objects), a teacher whose vocabulary, tokenizer or label set differs from the student's, a
            module without ``student_attr``.
        FileNotFoundError: the teacher path does not exist.
        RuntimeError: at the first training step: ``training_step`` returned no loss, the student never ran
            forward in it, or manual optimization without ``apply_training_objectives``.

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
        teacher_tokenizer: str | None = None,
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
        self.teacher_tokenizer = teacher_tokenizer
        self.student_attr = student_attr
        self.teacher: nn.Module | None = None
        self.projections = nn.ModuleDict()
        self._step: _Step | None = None  # set only while the wrapped training_step runs
        self._hooks: list[Any] = []
        self._wrapped: tuple[pl.LightningModule, Callable[..., Any], Any] | None = None
        self._student_signature: inspect.Signature | None = None
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

    # ------------------------------------------------------------------------------------------- loading & checks
    def _load(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Called at fit start, not in setup: callbacks' setup runs before the module's, where ours build the model.
        if self.teacher is not None:
            return
        student = self._student(pl_module)
        teacher, hparams = _load_teacher(
            self.teacher_spec, auto_class_for(student), self.teacher_architecture, "model."
        )
        self._check_compatible(student, teacher)
        self._check_tokenizer(trainer, pl_module, hparams)
        teacher.eval().requires_grad_(False)
        self.teacher = teacher
        if self.hidden_layers:
            s_width = _width(student)
            t_width = _width(teacher)
            for s_idx in self.hidden_layers:
                if s_width != t_width:
                    # Seeded by the block index, on a forked RNG: the same init on every DDP rank and in every run,
                    # and the global random stream (dropout, sampling) is left as it was.
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(s_idx)
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

    def _check_tokenizer(self, trainer: pl.Trainer, pl_module: pl.LightningModule, hparams: dict[str, Any]) -> None:
        """Same vocab_size is not enough: two tokenizers of one size can give the same id to different tokens."""
        student_tok = getattr(pl_module, "tokenizer", None)
        if not hasattr(student_tok, "get_vocab"):
            student_tok = getattr(getattr(trainer, "datamodule", None), "tokenizer", None)
        if self.teacher_tokenizer is not None:
            source: str | None = self.teacher_tokenizer
        else:
            candidates = [self.teacher_spec, hparams.get("tokenizer"), hparams.get("model")]
            source = next((d for d in map(_tokenizer_dir, candidates) if d is not None), None)
        if source is None or student_tok is None or not hasattr(student_tok, "get_vocab"):
            return
        teacher_vocab, student_vocab = load_tokenizer(source).get_vocab(), student_tok.get_vocab()
        if teacher_vocab == student_vocab:
            return
        differ = sorted(
            tok for tok in set(teacher_vocab) | set(student_vocab) if teacher_vocab.get(tok) != student_vocab.get(tok)
        )
        examples = ", ".join(f"{t!r}: {teacher_vocab.get(t)} vs {student_vocab.get(t)}" for t in differ[:3])
        raise ValueError(
            f"DistillationTeacher: the teacher's tokenizer ({source!r}, {len(teacher_vocab)} tokens) and the student's "
            f"({len(student_vocab)} tokens) differ on {len(differ)} tokens (teacher id vs student id: {examples}); "
            "distillation needs the same tokenizer. Use a teacher trained with the student's tokenizer, or pass "
            "teacher_tokenizer= if the teacher's tokenizer lives elsewhere."
        )

    # ------------------------------------------------------------------------------------------- fit start / end
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._load(trainer, pl_module)
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
        self._restore()  # a fit that raised before on_fit_end must not leave a second wrapper or hook
        student = self._student(pl_module)
        self._student_signature = inspect.signature(student.forward)
        self._hooks.append(student.register_forward_hook(self._on_student_forward, with_kwargs=True))
        if self.hidden_layers:
            _, blocks = find_blocks(student)
            for s_idx in self.hidden_layers:
                self._hooks.append(blocks[s_idx].register_forward_hook(self._capture(s_idx)))
        attach_objective(pl_module, self)
        # An instance attribute shadows the class's training_step for this module only. Lightning reaches the step
        # through getattr on the module in every strategy (Strategy.training_step, and _ForwardRedirection under
        # DDP / FSDP, which looks the method up on the wrapped module); checked on lightning 2.6.
        original = pl_module.training_step
        previous = pl_module.__dict__.get("training_step")

        @functools.wraps(original)
        def training_step(*args: Any, **kwargs: Any) -> Any:
            return self._training_step(pl_module, original, *args, **kwargs)

        pl_module.training_step = training_step  # type: ignore[method-assign]
        self._wrapped = (pl_module, training_step, previous)

    def _restore(self) -> None:
        if self._wrapped is not None:
            module, wrapper, previous = self._wrapped
            if module.__dict__.get("training_step") is wrapper:
                if previous is None:
                    del module.__dict__["training_step"]
                else:
                    module.__dict__["training_step"] = previous
            detach_objective(module, self)
            self._wrapped = None
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self._step = None

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        # The projections live outside the DDP-wrapped module, so DDP does not average their gradients.
        if trainer.world_size > 1:
            for param in self.projections.parameters():
                if param.grad is not None:
                    param.grad = trainer.strategy.reduce(param.grad, reduce_op="mean")

    # ------------------------------------------------------------------------------------------- the step
    def _on_student_forward(self, module: nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        step = self._step
        if step is None or not torch.is_grad_enabled():  # outside training_step, or a no-grad probe inside it
            return
        assert self.teacher is not None and self._student_signature is not None
        bound = self._student_signature.bind_partial(*args, **kwargs).arguments
        inputs = {k: v for k, v in bound.items() if k in _INPUT_KEYS and isinstance(v, torch.Tensor)}
        if "input_ids" not in inputs:
            raise RuntimeError(
                f"DistillationTeacher: the student {type(module).__name__} was called without input_ids (got "
                f"{sorted(bound)}); the teacher needs the token ids the student sees. Call the student with input_ids."
            )
        with torch.no_grad():
            step.teacher_out = self.teacher(**inputs, output_hidden_states=bool(self.hidden_layers))
        step.inputs, step.student_out = inputs, output

    def _capture(self, idx: int) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self._step is not None:
                self._step.hidden[idx] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    def _training_step(self, pl_module: pl.LightningModule, original: Callable[..., Any], *args: Any,
                       **kwargs: Any) -> Any:
        distillation_targets(pl_module, clear=True)
        self._step = step = _Step()
        try:
            result = original(*args, **kwargs)
        finally:
            self._step = None
        name = type(pl_module).__name__
        if step.applied:
            return result
        if not pl_module.automatic_optimization:
            raise RuntimeError(
                f"DistillationTeacher: {name} uses manual optimization, so the callback cannot change the loss you "
                "backward. Pass it through the objective before manual_backward: `loss = apply_training_objectives("
                "self, batch, outputs, loss)` (from lit_llm.compression.distillation)."
            )
        loss = result.get("loss") if isinstance(result, Mapping) else result
        if not isinstance(loss, torch.Tensor):
            raise RuntimeError(
                f"DistillationTeacher: {name}.training_step returned {type(result).__name__}"
                f"{' without a loss' if isinstance(result, Mapping) else ''}, so there is no loss to mix the teacher "
                "into; return the task loss (a tensor, or a dict with 'loss')."
            )
        if step.student_out is None:
            raise RuntimeError(
                f"DistillationTeacher: the student ({name}.{self.student_attr}) did not run forward (with grad) in "
                "training_step, so there are no student logits to distill into. Call the model held by "
                f"{self.student_attr!r} in training_step, or set student_attr= to the attribute you call."
            )
        total = self._objective(pl_module, step, loss, _logits(step.student_out))
        return {**result, "loss": total} if isinstance(result, Mapping) else total

    def __call__(self, module: nn.Module, batch: Any, outputs: Any, loss: torch.Tensor) -> torch.Tensor:
        """The objective, when the module calls ``apply_training_objectives`` itself (see the class docstring)."""
        step = self._step
        if step is None or not module.training:  # outside the fit's training_step: nothing to distill
            return loss
        if step.teacher_out is None:
            raise RuntimeError(
                f"DistillationTeacher: apply_training_objectives was called before the student "
                f"({type(module).__name__}.{self.student_attr}) ran forward with grad in this training_step; call it "
                "with the outputs of that forward."
            )
        step.applied = True
        return self._objective(module, step, loss, _logits(outputs))

    def _objective(self, module: nn.Module, step: _Step, loss: torch.Tensor, logits: torch.Tensor | None) -> Any:
        """``alpha * KD + (1 - alpha) * loss (+ hidden)``, KD reduced like ``loss`` (mean, or sum over targets)."""
        teacher_logits = _logits(step.teacher_out)
        if logits is None or teacher_logits is None:
            raise RuntimeError(
                f"DistillationTeacher: the student's output ({type(step.student_out).__name__}) or the teacher's has "
                "no logits; distillation needs HF outputs with `logits`."
            )
        targets = distillation_targets(module)
        n_targets = None
        if targets is not None:
            student_rows, teacher_rows = select_targets(logits, teacher_logits, targets.positions)  # (N, V) each
            kd = kd_loss(student_rows, teacher_rows, self.temperature, reduction=targets.reduction)
            if targets.reduction == "sum":
                n_targets = student_rows.shape[0]
        else:
            mask = step.inputs.get("attention_mask") if logits.dim() == 3 else None  # (B, T): no target on padding
            kd = kd_loss(logits, teacher_logits, self.temperature, mask)
        total = self.alpha * kd + (1.0 - self.alpha) * loss
        # Log only inside a trainer's training_step (a bare call, e.g. from a notebook, has nothing to log to).
        log = getattr(module, "log", None) if getattr(module, "_trainer", None) is not None else None
        if self.hidden_layers:
            hidden = cast(torch.Tensor, sum(
                hidden_state_loss(
                    step.hidden[s], step.teacher_out.hidden_states[t + 1], self.projections[str(s)]
                    if str(s) in self.projections else None,
                )
                for s, t in self.hidden_layers.items()
            ))
            # A summed task loss is divided by the step's target count later: weigh this mean by the micro-batch's.
            total = total + self.hidden_weight * hidden * (n_targets if n_targets is not None else 1)
            if log:
                log("train/distill_hidden", hidden.detach(), on_step=True, on_epoch=False)
        if log:
            mean_kd = kd.detach() / max(n_targets, 1) if n_targets is not None else kd.detach()
            log("train/distill_kd", mean_kd, on_step=True, on_epoch=False)
        return total

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"projections": {k: v.detach().cpu() for k, v in self.projections.state_dict().items()}}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_projection_state = state_dict.get("projections") or None
        if self._pending_projection_state and len(self.projections):
            self.projections.load_state_dict(self._pending_projection_state)


def _width(model: nn.Module) -> int:
    width = config_size(getattr(model, "config", None), "hidden_size")
    if width is not None:
        return width
    raise ValueError(f"cannot read the hidden width of {type(model).__name__} (no config.hidden_size).")
