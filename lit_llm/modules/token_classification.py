"""Token classification (NER) around ``AutoModelForTokenClassification``, scored by entity-level F1."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from transformers import AutoModelForTokenClassification, PreTrainedTokenizerBase
from typing_extensions import override

from lit_llm.compression.distillation import apply_training_objectives
from lit_llm.text.entities import (
    EntityMetric,
    EntityScores,
    TagScheme,
    extract_entities,
    format_entity_report,
    infer_scheme,
    parse_tag,
)
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

__all__ = ["TokenClassifier", "entity_spans"]

_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "labels")
_WORD = re.compile(r"\S+")


def entity_spans(
    text: str,
    word_offsets: list[tuple[int, int]],
    word_tags: list[str],
    word_scores: list[float],
    scheme: TagScheme,
) -> list[dict[str, Any]]:
    """Entities of one text as ``{type, text, start, end, score}`` with character offsets into ``text``.

    Tags are read leniently (seqeval's default mode), so a model that starts an entity with ``I-`` still
    yields it; ``score`` is the mean over the entity's words of the predicted tag's probability.

    Example::
        >>> entity_spans("John lives", [(0, 4), (5, 10)], ["B-PER", "O"], [0.9, 0.8], "BIO")
        [{'type': 'PER', 'text': 'John', 'start': 0, 'end': 4, 'score': 0.9}]
    """
    spans = []
    for ent in extract_entities(word_tags, scheme, "default"):
        start, end = word_offsets[ent.start][0], word_offsets[ent.end - 1][1]
        score = sum(word_scores[ent.start : ent.end]) / (ent.end - ent.start)
        spans.append({"type": ent.type, "text": text[start:end], "start": start, "end": end, "score": score})
    return spans


class TokenClassifier(pl.LightningModule):
    """Fine-tune a transformer to tag tokens (NER, chunking); log entity-level P / R / F1 and token accuracy.

    The tag scheme follows the labels (E- or S- tags mean BIOES, else BIO). Labels come from ``labels`` or, when
    None, from ``trainer.datamodule.labels`` in ``setup()`` (the model is built then); they are written back into
    ``hparams`` so a checkpoint reloads without the datamodule. The export carries ``id2label`` / ``label2id``, so
    ``transformers.pipeline("token-classification", model=dir)`` works on it.

    Logs ``train/loss``, ``val/loss``, ``val/f1_micro``, ``val/precision_micro``, ``val/recall_micro``,
    ``val/f1_macro``, ``val/accuracy`` (tokens) and the same under ``test/`` plus ``test/f1_<type>``; at test end
    writes ``ner_report.txt`` / ``.json`` (per entity type) under ``report_dir``.
    ``predict_step`` returns, per sentence, ``[{type, text, start, end, score}]`` with character offsets into the
    sentence's words joined by single spaces; :meth:`extract_entities` does the same for raw texts.

    Batches must carry ``word_ids`` (B, T) (-1 for no word) next to the model inputs, as
    :class:`lit_llm.datamodules.TokenClassificationDataModule` gives; targets of non-scored sub-tokens are -100.

    Args:
        model: HF model directory / hub id, or a config dict with ``model_type``.
        labels: tag names in id order; None takes them from the datamodule.
        tokenizer: tokenizer directory / hub id; None uses ``model`` when it is a path.
        entity_mode: how the logged entity metric reads tags: ``strict`` (seqeval mode="strict") or ``default``
            (seqeval's default, conlleval's chunking); the test report also gives the other mode's micro F1.
        optimizer: optimizer factory (LightningCLI's ``--optimizer``).
        lr_scheduler: optional scheduler factory, stepped every optimizer step.
        layer_decay: layer-wise LR decay factor in (0, 1], or None.
        gradient_checkpointing: trade compute for memory in the transformer blocks.
        compile: ``torch.compile`` the model in place.
        export_dir: where to export at fit end; default ``<default_root_dir>/export``; must be new or empty.
        export: whether to export at fit end.
        report_dir: where the test report goes; default ``<default_root_dir>/reports``.

    Raises:
        ValueError: an unknown entity mode, labels without ``O``, no labels anywhere, labels that
            differ from the datamodule's.

    Example::
        model = TokenClassifier("data/models/all-MiniLM-L6-v2")
        trainer.fit(model, datamodule=TokenClassificationDataModule(...))
        model.extract_entities(["John lives in New York"])
    """

    def __init__(
        self,
        model: str | dict[str, Any],
        labels: list[str] | None = None,
        tokenizer: str | None = None,
        entity_mode: Literal["strict", "default"] = "strict",
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
        if entity_mode not in ("strict", "default"):
            raise ValueError(f"TokenClassifier(entity_mode={entity_mode!r}): use 'strict' or 'default'.")
        check_layer_decay("TokenClassifier", layer_decay)
        # Factories are not plain data: keep them out of the checkpoint so it loads with weights_only=True.
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        if tokenizer is None and isinstance(model, str):
            tokenizer = model
        self.model_spec = model
        self.tokenizer_name = tokenizer
        self.entity_mode = entity_mode
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.layer_decay = layer_decay
        self.gradient_checkpointing = gradient_checkpointing
        self.export_dir, self.export, self.report_dir = export_dir, export, report_dir
        self.labels: list[str] | None = None
        self.tag_scheme: TagScheme = "BIO"
        self.model: Any = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self.export_path: Path | None = None
        self.report_path: Path | None = None
        if labels is not None:
            self._build(list(labels))

    # ---------------------------------------------------------------- building
    def _build(self, labels: list[str]) -> None:
        if "O" not in labels or len(set(labels)) != len(labels):
            raise ValueError(f"labels={labels!r}: need unique tags including 'O', e.g. ['O', 'B-PER', 'I-PER'].")
        for tag in labels:
            parse_tag(tag)
        self.labels = labels
        self.tag_scheme = infer_scheme(labels)
        self.hparams["labels"] = labels  # so load_from_checkpoint rebuilds the same head
        overrides: dict[str, Any] = {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {t: i for i, t in enumerate(labels)},
        }
        if not isinstance(self.model_spec, dict):
            overrides["ignore_mismatched_sizes"] = True  # a fine-tuned head with other labels is replaced
        self.model = build_model(AutoModelForTokenClassification, self.model_spec,
                                 gradient_checkpointing=self.gradient_checkpointing, compile=self.hparams["compile"],
                                 **overrides)
        self.val_entities = EntityMetric(labels, self.tag_scheme, self.entity_mode)
        self.test_entities = EntityMetric(labels, self.tag_scheme, self.entity_mode)
        # The other reading of the same predictions, so the test report shows what strictness costs.
        self.other_mode: Literal["strict", "default"] = "default" if self.entity_mode == "strict" else "strict"
        self.test_entities_other = EntityMetric(labels, self.tag_scheme, self.other_mode)

    @override
    def setup(self, stage: str) -> None:
        data = read_datamodule(self)
        if self.labels is None:
            self._build(data.require_labels("TokenClassifier"))
        elif data.labels is not None and data.labels != self.labels:
            raise ValueError(
                f"TokenClassifier labels {self.labels} differ from the datamodule's {data.labels}; the ids would not "
                "match. Give both the same labels, or leave the model's labels unset."
            )
        elif data.labels_error is not None and stage != "predict":
            raise data.labels_error  # only a predict-only datamodule may not know its labels
        check_export_target(self, stage, self.export_dir, self.export)

    @override
    def configure_model(self) -> None:
        # Lightning calls this after setup(), which has built the model already. A callback that copies the module
        # in its own setup, before ours (Lightning's WeightAveraging / EMAWeightAveraging), calls it first: build
        # the model then, or the callback would average a module with no parameters, silently. Without a trainer
        # (load_from_checkpoint calls this too) there is no data to build from: the checkpoint's labels did.
        if self.labels is None and self._trainer is not None:
            self._build(read_datamodule(self).require_labels("TokenClassifier"))

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:
            self._tokenizer = load_module_tokenizer("TokenClassifier", self.tokenizer_name)
        return self._tokenizer

    # ---------------------------------------------------------------- steps
    def _require_model(self) -> None:
        if self.model is None:
            raise RuntimeError("TokenClassifier has no labels yet: pass labels=[...] or run it under a Trainer.")

    def forward(self, batch: dict[str, Any]) -> Any:
        self._require_model()
        return self.model(**{k: batch[k] for k in _MODEL_INPUTS if k in batch})

    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        outputs = self(batch)
        # Distillation and other training objectives attached by callbacks mix in here (no-op without them).
        loss = apply_training_objectives(self, batch, outputs, outputs.loss)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["input_ids"]))
        return loss

    def _eval_step(self, batch: dict[str, Any], stage: str, *metrics: EntityMetric) -> None:
        out = self(batch)
        # The loss is a mean over the batch's labelled tokens: weighting by them makes the epoch value the mean over
        # the split's tokens, whatever the batches (sorted by length or not).
        tokens = int((batch["labels"] != -100).sum())
        self.log(f"{stage}/loss", out.loss, on_epoch=True, sync_dist=True, batch_size=max(tokens, 1))
        preds = out.logits.argmax(-1)  # (B, T) label ids
        for metric in metrics:
            metric.update(preds, batch["labels"])  # positions whose target is -100 are not scored

    def _log_entities(self, stage: str, metric: EntityMetric) -> dict[str, float]:
        values = metric.compute()
        if stage == "val":
            values = {k: v for k, v in values.items() if not k.startswith("f1_") or k in ("f1_micro", "f1_macro")}
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, prog_bar=False)
        return {k: float(v) for k, v in values.items()}

    @override
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_entities)

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_entities("val", self.val_entities)
        self.val_entities.reset()

    @override
    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_entities, self.test_entities_other)

    @override
    def on_test_epoch_end(self) -> None:
        self._log_entities("test", self.test_entities)
        other = float(self.test_entities_other.compute()["f1_micro"])
        self.log(f"test/f1_micro_{self.other_mode}", other)
        scores, other_scores = self.test_entities.scores, self.test_entities_other.scores
        self.test_entities.reset()
        self.test_entities_other.reset()
        if scores is not None and other_scores is not None and self.trainer.is_global_zero:
            self.report_path = self._write_report(scores, other_scores)

    def _write_report(self, scores: EntityScores, other: EntityScores) -> Path:
        out = report_path(self, self.report_dir)
        report = {"mode": self.entity_mode, "scheme": self.tag_scheme, **scores.as_dict(),
                  f"micro_{self.other_mode}": other.micro}
        (out / "ner_report.json").write_text(json.dumps(report, indent=2) + "\n")
        path = out / "ner_report.txt"
        path.write_text(
            f"entity-level scores, {self.entity_mode} mode ({self.tag_scheme})\n\n{format_entity_report(scores)}\n"
            f"micro F1 in {self.other_mode} mode: {other.micro['f1']:.4f}\n"
        )
        return path

    def _decode(
        self, logits: torch.Tensor, word_ids: torch.Tensor, n_words: list[int]
    ) -> list[tuple[list[str], list[float]]]:
        """Per sentence, one tag and probability per word, read at each word's first sub-token."""
        assert self.labels is not None
        probs = logits.float().softmax(-1)  # (B, T, C)
        best, ids = probs.max(-1)  # (B, T)
        out = []
        for b, n in enumerate(n_words):
            tags, scores = ["O"] * n, [0.0] * n
            seen: set[int] = set()
            for t, w in enumerate(word_ids[b].tolist()):
                if w >= 0 and w not in seen:
                    seen.add(w)
                    tags[w], scores[w] = self.labels[int(ids[b, t])], float(best[b, t])
            out.append((tags, scores))  # words cut by truncation stay "O"
        return out

    @override
    def predict_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> list[list[dict[str, Any]]]:
        words: list[list[str]] = batch["words"]
        logits = self(batch).logits
        results = []
        for sent_words, (tags, scores) in zip(words, self._decode(logits, batch["word_ids"], [len(w) for w in words])):
            offsets, pos = [], 0
            for w in sent_words:
                offsets.append((pos, pos + len(w)))
                pos += len(w) + 1
            results.append(entity_spans(" ".join(sent_words), offsets, tags, scores, self.tag_scheme))
        return results

    @torch.no_grad()
    def extract_entities(self, texts: list[str], max_length: int = 512) -> list[list[dict[str, Any]]]:
        """Entities of raw texts, split into words on whitespace, with character offsets into each text.

        Args:
            texts: the texts.
            max_length: truncation length in sub-word tokens (words past it get no entity).

        Example::
            >>> model.extract_entities(["John Smith lives in Paris"])  # doctest: +SKIP
            [[{'type': 'PER', 'text': 'John Smith', 'start': 0, 'end': 10, 'score': 0.98}, ...]]
        """
        self._require_model()
        matches = [[(m.start(), m.end()) for m in _WORD.finditer(t)] for t in texts]
        words = [[t[a:b] for a, b in spans] for t, spans in zip(texts, matches)]
        enc = self.tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length,
                             padding=True, return_tensors="pt")
        word_ids = torch.tensor([[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(texts))])
        was_training = self.training
        self.eval()
        logits = self.model(**{k: v.to(self.device) for k, v in enc.items()}).logits
        self.train(was_training)
        decoded = self._decode(logits, word_ids, [len(w) for w in words])
        return [
            entity_spans(text, spans, tags, scores, self.tag_scheme)
            for text, spans, (tags, scores) in zip(texts, matches, decoded)
        ]

    # ---------------------------------------------------------------- optim and export
    @override
    def configure_optimizers(self) -> Any:
        self._require_model()
        return optimizers_for(self.model, self.optimizer_factory, self.lr_scheduler_factory, self.layer_decay)

    @override
    def on_fit_end(self) -> None:
        tokenizer = self.tokenizer if self.tokenizer_name is not None and self.export else None
        path = export_best(self, self.model, tokenizer, output_dir(self, self.export_dir, "export"), self.export)
        self.export_path = path or self.export_path
