"""Sequence classification (single- or multi-label) and regression around ``AutoModelForSequenceClassification``."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection, PearsonCorrCoef, SpearmanCorrCoef
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
    MultilabelAccuracy,
    MultilabelF1Score,
    MultilabelPrecision,
    MultilabelRecall,
    MultilabelStatScores,
)
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from lit_llm.compression.distillation import apply_training_objectives
from lit_llm.errors import InvalidArgumentError
from lit_llm.hf import ModelSpec, trust_remote_code
from lit_llm.modules.best_checkpoint import export_best, output_dir
from lit_llm.modules.building import (
    build_model,
    check_export_target,
    check_layer_decay,
    load_module_tokenizer,
    report_path,
)
from lit_llm.modules.contract import read_datamodule
from lit_llm.training.optim import optimizers_for
from lit_llm.tracking.reports import (
    format_regression_report,
    format_report,
    log_figure,
    plot_confusion_matrix,
    regression_report,
    report_from_confusion,
    report_from_multilabel,
    save_regression_report,
    save_report,
)

__all__ = ["SequenceClassifier"]

_GENERIC_LABEL = re.compile(r"^LABEL_\d+$")


def _metric_name(label: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", label)


def _labels_in_config(model: ModelSpec) -> tuple[list[str] | None, bool]:
    """The id2label of a fine-tuned model directory (None when it holds only the generic LABEL_i names of a
    classifier), and whether the model is a regression model (``problem_type="regression"``)."""
    if isinstance(model, dict):
        return None, False
    try:
        config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code())
    except (OSError, ValueError):
        return None, False
    names = [config.id2label[i] for i in sorted(config.id2label)]
    if getattr(config, "problem_type", None) == "regression":
        return names[:1] or ["LABEL_0"], True  # one output; its name is the target's, generic or not
    if not names or all(_GENERIC_LABEL.match(n) for n in names):
        return None, False
    return names, False


def _spearman() -> SpearmanCorrCoef:
    # Ranks need every value of the epoch, which torchmetrics warns about at construction; an evaluation set's
    # predictions are one float each, so the buffer is small.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Metric `SpearmanCorrcoef` will save all targets")
        return SpearmanCorrCoef()


class SequenceClassifier(pl.LightningModule):
    """Fine-tune (or train from scratch) a transformer to classify texts or text pairs.

    Single-label uses softmax cross-entropy, multi-label sigmoid BCE. Metrics (torchmetrics): accuracy,
    macro / micro / weighted F1 and per-class precision / recall / F1. At test end it prints and saves a
    classification report (as sklearn's) and a confusion-matrix PNG, which it also logs as an image to every
    logger of the run that takes images (TensorBoard, W&B); at fit end it exports the best weights with the
    tokenizer in HF format, so ``transformers.pipeline("text-classification", model=export_dir)`` works.

    Regression (a real-valued target, e.g. a rating): one output, MSE loss, metrics MAE, RMSE, Pearson and
    Spearman correlation (``val/mae``, ``val/rmse``, ...); the test report holds the same four. The switch is
    the datamodule's ``regression: true`` (its label column holds numbers), read at setup like ``multi_label``;
    the export is an HF model with ``problem_type="regression"``, whose ``pipeline`` returns the raw value.

    Labels come from ``labels``, else from a fine-tuned model's ``id2label``, else from the datamodule's
    ``labels`` (and ``multi_label``, ``regression``) attributes at setup: that is the contract with any
    datamodule. A regression model has one label: the target's name.

    Args:
        model: model directory or hub id, or a config dict with ``model_type`` to train from scratch.
        labels: class names in id order.
        num_labels: expected number of classes; an error when the labels found disagree.
        multi_label: several labels per example; None takes the datamodule's setting (default False).
        regression: predict one real value (MSE loss); None takes the datamodule's ``regression`` (default
            False), or True for a fine-tuned regression model. Set it only to use the module without a datamodule.
        tokenizer: tokenizer directory or hub id; defaults to ``model`` (needed when ``model`` is a config).
        optimizer: optimizer factory (``torch.optim.AdamW`` by default; any ``torch.optim`` class or
            ``bitsandbytes.optim.AdamW8bit`` from the CLI). Biases, norms and embeddings get no weight decay.
        lr_scheduler: optional scheduler factory, stepped every optimizer step (prefer the WarmupSchedule callback).
        layer_decay: layer-wise LR decay factor in (0, 1]; None for one rate.
        gradient_checkpointing: recompute activations in the backward pass to save memory.
        compile: ``torch.compile`` the model in place.
        export_dir: where the HF export goes at fit end; default ``<default_root_dir>/export``; must be new or empty.
        export: whether to export at fit end.
        report_dir: where test reports go; default ``<default_root_dir>/reports``.

    Raises:
        ValueError: ``num_labels`` disagrees with the labels; the data's labels differ from the model's; the data
            is regression and the model a classifier (or the reverse); regression with ``multi_label``.
        FileExistsError: a non-empty ``export_dir``.

    Example::
        model = SequenceClassifier("data/models/all-MiniLM-L6-v2", optimizer=partial(torch.optim.AdamW, lr=5e-5))
        trainer.fit(model, datamodule=TextClassificationDataModule("data/models/all-MiniLM-L6-v2", train_file=...))
    """

    def __init__(
        self,
        model: str | dict[str, Any],
        labels: list[str] | None = None,
        num_labels: int | None = None,
        multi_label: bool | None = None,
        regression: bool | None = None,
        tokenizer: str | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        layer_decay: float | None = None,
        gradient_checkpointing: bool = False,
        compile: bool = False,
        export_dir: str | None = None,
        export: bool = True,
        report_dir: str | None = None,
    ) -> None:
        super().__init__()
        if num_labels is not None and num_labels < 1:
            raise ValueError(f"num_labels={num_labels!r}: must be >= 1.")
        check_layer_decay("SequenceClassifier", layer_decay)
        if regression and multi_label:
            raise InvalidArgumentError(
                "regression=True and multi_label=True: a regression model predicts one value; choose one."
            )
        if isinstance(model, dict) and tokenizer is None:
            raise ValueError("model is a config dict: also give tokenizer (a directory or hub id) for export/predict.")
        # Factories are not plain data: keep them out of the checkpoint so it loads with weights_only=True.
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.model_spec = model
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.layer_decay = layer_decay
        self.gradient_checkpointing = gradient_checkpointing
        self.tokenizer_name = tokenizer or (model if isinstance(model, str) else None)
        self.export_dir = export_dir
        self.export = export
        self.report_dir = report_dir
        self.export_path: Path | None = None
        self.report_path: Path | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self.model: PreTrainedModel | None = None
        found, regression_model = _labels_in_config(model) if labels is None else (None, False)
        if regression_model and regression is False:
            raise InvalidArgumentError(
                f"model {model!r} is a regression model (problem_type 'regression'); pass regression=True (or leave "
                "it unset), or start from a classification or base model."
            )
        self.labels = list(labels) if labels is not None else found
        self.multi_label = multi_label
        self.regression = True if regression_model else regression
        if self.labels is not None:
            self._build()

    # ---------------------------------------------------------------- model
    def _build(self) -> None:
        assert self.labels is not None
        num = self.hparams.get("num_labels")
        if num is not None and num != len(self.labels):
            raise ValueError(
                f"num_labels={num} but {len(self.labels)} labels were found ({', '.join(self.labels)}). "
                "Fix num_labels, or the label column / labels list."
            )
        self.multi_label = bool(self.multi_label)
        self.regression = bool(self.regression)
        if self.regression and len(self.labels) != 1:
            raise InvalidArgumentError(
                f"regression with labels {self.labels}: a regression model has one output, named by one label "
                "(the target's name, e.g. ['score'])."
            )
        self.hparams["labels"] = self.labels
        self.hparams["multi_label"] = self.multi_label
        self.hparams["regression"] = self.regression
        problem_type = "single_label_classification"
        if self.regression:
            problem_type = "regression"
        elif self.multi_label:
            problem_type = "multi_label_classification"
        overrides: dict[str, Any] = {
            "num_labels": len(self.labels),
            "id2label": dict(enumerate(self.labels)),
            "label2id": {name: i for i, name in enumerate(self.labels)},
            "problem_type": problem_type,
        }
        if not isinstance(self.model_spec, dict):
            # A fine-tuned head with another label count is replaced, not an error.
            overrides["ignore_mismatched_sizes"] = True
        self.model = build_model(AutoModelForSequenceClassification, self.model_spec,
                                 gradient_checkpointing=self.gradient_checkpointing, compile=self.hparams["compile"],
                                 **overrides)
        self._build_metrics()

    def _build_metrics(self) -> None:
        n = len(self.labels or [])
        for stage in ("val", "test"):
            if self.regression:
                metrics = MetricCollection(
                    {
                        "mae": MeanAbsoluteError(),
                        "rmse": MeanSquaredError(squared=False),
                        "pearson": PearsonCorrCoef(),
                        "spearman": _spearman(),
                    }
                )
                per_class = MetricCollection({})
            elif self.multi_label:
                metrics = MetricCollection(
                    {
                        "accuracy": MultilabelAccuracy(n, average="micro"),
                        "f1_macro": MultilabelF1Score(n, average="macro"),
                        "f1_micro": MultilabelF1Score(n, average="micro"),
                        "f1_weighted": MultilabelF1Score(n, average="weighted"),
                    }
                )
                per_class = MetricCollection(
                    {
                        "precision": MultilabelPrecision(n, average=None),
                        "recall": MultilabelRecall(n, average=None),
                        "f1": MultilabelF1Score(n, average=None),
                        "stats": MultilabelStatScores(n, average=None),
                    }
                )
            else:
                metrics = MetricCollection(
                    {
                        "accuracy": MulticlassAccuracy(n, average="micro"),
                        "f1_macro": MulticlassF1Score(n, average="macro"),
                        "f1_micro": MulticlassF1Score(n, average="micro"),
                        "f1_weighted": MulticlassF1Score(n, average="weighted"),
                    }
                )
                per_class = MetricCollection(
                    {
                        "precision": MulticlassPrecision(n, average=None),
                        "recall": MulticlassRecall(n, average=None),
                        "f1": MulticlassF1Score(n, average=None),
                        "confusion": MulticlassConfusionMatrix(n),
                    }
                )
            setattr(self, f"{stage}_metrics", metrics.clone(prefix=f"{stage}/"))
            setattr(self, f"{stage}_per_class", per_class)

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:
            self._tokenizer = load_module_tokenizer("SequenceClassifier", self.tokenizer_name)
        return self._tokenizer

    def setup(self, stage: str) -> None:
        self._build_from_data()
        check_export_target(self, stage, self.export_dir, self.export)

    def configure_model(self) -> None:
        # Lightning calls this after setup(), which has built the model already. A callback that copies the module
        # in its own setup, before ours (Lightning's WeightAveraging / EMAWeightAveraging), calls it first: build
        # the model then, or the callback would average a module with no parameters, silently. Without a trainer
        # (load_from_checkpoint calls this too) there is no data to build from: the checkpoint's labels did.
        if self.model is None and self._trainer is not None:
            self._build_from_data()

    def _build_from_data(self) -> None:
        """Build the model from the datamodule's labels if it has none yet, else check the two agree."""
        data = read_datamodule(self)
        if self.multi_label is None:
            self.multi_label = bool(data.multi_label)
        if self.regression is None:
            self.regression = bool(data.regression)
        elif data.regression is not None and data.regression != self.regression:
            model_kind = "a regression model" if self.regression else "a classifier"
            data_kind = "class" if self.regression else "regression"
            raise InvalidArgumentError(
                f"the model is {model_kind} but the datamodule has regression={data.regression}: "
                f"the {data_kind} targets would not fit its head. Set the datamodule's regression to "
                f"{self.regression}, or start from a base (not fine-tuned) model."
            )
        if self.model is None:
            self.labels = data.require_labels("SequenceClassifier")
            self._build()
        elif data.labels is not None and data.labels != self.labels and not self.regression:
            raise ValueError(
                f"the data's labels {data.labels} differ from the model's {self.labels}: class ids would not match. "
                f"Set the datamodule's labels to {self.labels}."
            )

    def configure_optimizers(self) -> Any:
        assert self.model is not None, "setup() builds the model before the optimizer"
        return optimizers_for(self.model, self.optimizer_factory, self.lr_scheduler_factory, self.layer_decay)

    # ---------------------------------------------------------------- steps
    @staticmethod
    def _inputs(batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in batch.items() if k != "text"}

    def forward(self, **inputs: Any) -> Any:
        assert self.model is not None
        return self.model(**inputs)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        outputs = self(**self._inputs(batch))
        # Distillation and other attached objectives (no-op unless a callback attached one).
        loss = apply_training_objectives(self, batch, outputs, outputs.loss)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["input_ids"]))
        return loss

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        outputs = self(**self._inputs(batch))
        labels = batch["labels"]
        metrics: MetricCollection = getattr(self, f"{stage}_metrics")
        per_class: MetricCollection = getattr(self, f"{stage}_per_class")
        if self.regression:
            metrics.update(outputs.logits.squeeze(-1).float(), labels.float())  # (B,) predicted and true values
        else:
            preds = outputs.logits.sigmoid() if self.multi_label else outputs.logits.argmax(-1)  # (B, C) or (B,)
            target = labels.long()
            metrics.update(preds, target)
            per_class.update(preds, target)
        self.log(f"{stage}/loss", outputs.loss, on_epoch=True, prog_bar=True, batch_size=len(labels), sync_dist=True)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _log_epoch(self, stage: str) -> dict[str, torch.Tensor]:
        metrics: MetricCollection = getattr(self, f"{stage}_metrics")
        per_class: MetricCollection = getattr(self, f"{stage}_per_class")
        values = metrics.compute()
        self.log_dict(values, prog_bar=True)
        if self.regression:
            metrics.reset()
            return {k.removeprefix(f"{stage}/"): v for k, v in values.items()}
        computed = per_class.compute()
        assert self.labels is not None
        for kind in ("precision", "recall", "f1"):
            for name, value in zip(self.labels, computed[kind]):
                self.log(f"{stage}/{kind}_{_metric_name(name)}", value)
        metrics.reset()
        per_class.reset()
        return computed

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        computed = self._log_epoch("test")
        assert self.labels is not None
        if self.regression:
            report = regression_report(computed, self.labels[0])
            if self.trainer.is_global_zero:
                self.report_path = save_regression_report(report, report_path(self, self.report_dir))
                rank_zero_info("\nRegression report (test):\n" + format_regression_report(report))
            self.test_report = report
            return
        if self.multi_label:
            report = report_from_multilabel(computed["stats"], self.labels)
        else:
            report = report_from_confusion(computed["confusion"], self.labels)
        if self.trainer.is_global_zero:
            out = report_path(self, self.report_dir)
            self.report_path = save_report(report, out)
            if not self.multi_label:
                figure = plot_confusion_matrix(computed["confusion"], self.labels, out / "confusion_matrix.png", "test")
                log_figure(self.trainer.loggers, "test/confusion_matrix", figure, self.global_step)
            rank_zero_info("\nClassification report (test):\n" + format_report(report))
        self.test_report = report

    # ---------------------------------------------------------------- predict
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        inputs = {k: v for k, v in self._inputs(batch).items() if k != "labels"}
        logits = self(**inputs).logits  # (B, C)
        return self._decode(logits, batch.get("text"))

    def _decode(self, logits: torch.Tensor, texts: list[str] | None) -> list[dict[str, Any]]:
        assert self.labels is not None
        if self.regression:
            # As pipeline("text-classification") reads a regression head: the target's name and the raw value.
            values = logits.float().squeeze(-1).tolist()  # (B,)
            return [
                {"label": self.labels[0], "score": v, **({"text": texts[i]} if texts is not None else {})}
                for i, v in enumerate(values)
            ]
        probs = logits.float().sigmoid() if self.multi_label else logits.float().softmax(-1)  # (B, C)
        out = []
        for i, row in enumerate(probs.tolist()):
            item: dict[str, Any] = {"probabilities": dict(zip(self.labels, row))}
            if self.multi_label:
                item["labels"] = [name for name, p in zip(self.labels, row) if p >= 0.5]
            else:
                best = max(range(len(row)), key=row.__getitem__)
                item["label"], item["score"] = self.labels[best], row[best]
            if texts is not None:
                item["text"] = texts[i]
            out.append(item)
        return out

    @torch.no_grad()
    def classify(self, texts: list[str], batch_size: int = 32, max_length: int = 512) -> list[dict[str, Any]]:
        """Labels and probabilities for raw texts, outside any Trainer (a regression model: the value as ``score``).

        Example::
            SequenceClassifier(model="runs/rt/export").classify(["a gripping, funny film"])
        """
        if self.model is None:
            raise ValueError("SequenceClassifier.classify: the model has no labels yet; pass labels=[...].")
        was_training = self.training
        self.eval()
        results: list[dict[str, Any]] = []
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            enc = self.tokenizer(chunk, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            logits = self(**{k: v.to(self.device) for k, v in enc.items()}).logits
            results.extend(self._decode(logits, chunk))
        self.train(was_training)
        return results

    # ---------------------------------------------------------------- export
    def on_fit_end(self) -> None:
        assert self.model is not None
        tokenizer = self.tokenizer if self.export else None
        self.export_path = export_best(
            self, self.model, tokenizer, output_dir(self, self.export_dir, "export"), self.export
        ) or self.export_path
