"""Labelled text (or text pairs) for sequence classification or regression, from local files or an HF dataset."""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import datasets
import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from lit_llm.datamodules.augmented import AugmentedDataset, augmented_loader
from lit_llm.datamodules.files import DataFileError, check_texts, load_table, require_columns, row_location
from lit_llm.datamodules.loaders import split_loader
from lit_llm.errors import InvalidArgumentError
from lit_llm.hf import load_tokenizer
from lit_llm.text.augmentation import Augmenter, TextAugmentation, training_vocabulary

__all__ = ["TextClassificationDataModule"]

_SPLITS = ("train", "validation", "test", "predict")


class _PadKeepingText:
    """DataCollatorWithPadding that also carries the raw texts through, for ``predict`` outputs."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.pad = DataCollatorWithPadding(tokenizer, return_tensors="pt")

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        texts = [f.pop("text") for f in features] if features and "text" in features[0] else None
        batch = dict(self.pad(features))
        if texts is not None:
            batch["text"] = texts
        return batch


class _AugmentTexts:
    """The transform of an augmented training example: edit its text (and pair), re-tokenize only what changed."""

    def __init__(self, augmenter: Augmenter, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        self.augmenter, self.tokenizer, self.max_length = augmenter, tokenizer, max_length

    def __call__(self, row: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        text, pair = row["text"], row.get("text_pair")
        new_text = self.augmenter.text(text, rng)
        new_pair = self.augmenter.text(pair, rng) if pair is not None else None
        tokenized = {k: v for k, v in row.items() if k not in ("text", "text_pair")}
        if new_text is None and new_pair is None:
            return tokenized  # left as it is: the pre-tokenized example
        enc = self.tokenizer(new_text or text, new_pair or pair, truncation=True, max_length=self.max_length)
        return {**enc, "labels": row["labels"]}


class TextClassificationDataModule(pl.LightningDataModule):
    """Train / validation / test / predict splits of labelled texts, tokenized once and cached by ``datasets``.

    Files are CSV, TSV, JSON, JSONL or Parquet; or give ``dataset_name`` for ``datasets.load_dataset``.
    Labels are given or inferred (sorted) from the training set; without a validation file a stratified, seeded
    validation split is carved from train. Batches are padded per batch (dynamic padding).

    Modules read ``labels``, ``multi_label`` and ``regression`` from this datamodule when they are not given theirs.

    Regression (``regression: true``): the label column holds one real number per example (CSV cells such as
    ``3.5``, JSON numbers or numeric strings); a value that is not a finite number is an error naming the file and
    line. ``labels`` is then ``[label_field]``, the name of the one target.

    Augmentation (``augmentation: {ops: [swap, delete, insert], p: 0.5, rate: 0.1}``, see
    :class:`~lit_llm.text.augmentation.TextAugmentation`): training examples are edited on the fly, each epoch
    anew; validation, test and predict data never are. Labels are kept as they are. Example ``i`` of epoch ``e``
    is edited with its own generator seeded by ``(seed, e, i)``, so a run is reproducible and an exact resume
    replays the interrupted epoch's augmented batches identically. ``insert`` draws from the words seen at least
    twice in the training texts.

    Args:
        tokenizer: tokenizer directory or hub id (usually the model's).
        train_file: training file.
        validation_file: validation file; None carves ``val_fraction`` of train.
        test_file: test file.
        predict_file: texts to classify with ``predict`` (no label column needed).
        dataset_name: an HF dataset (name or local script/directory) instead of files.
        dataset_config: its configuration name.
        text_field: column holding the text.
        text_pair_field: optional column holding the second text of a pair.
        label_field: column holding the label (a list, or a string split on ``label_separator``, if multi-label).
        labels: the label names, in id order; None infers them from train.
        multi_label: several labels per example (sigmoid / BCE).
        regression: the label column is a real-valued target (MSE loss, MAE / RMSE / Pearson / Spearman).
        label_separator: separator of several labels in one string cell (multi-label only).
        val_fraction: fraction of train carved out for validation when there is no validation file.
        seed: seed of that split.
        max_length: truncation length in tokens; the number of truncated examples is reported.
        batch_size: training micro-batch per device.
        eval_batch_size: batch for validation / test / predict (default: 2 x batch_size).
        num_workers: dataloader workers.
        group_by_length: group training batches by length (as the HF Trainer's
            ``train_sampling_strategy="group_by_length"``), so dynamic padding pads little; the order is still
            shuffled, seeded and resumable (see :class:`~lit_llm.datamodules.ResumableSampler`).
        sort_eval_by_length: validation and test batches of examples of about one length (the split sorted by
            length, shortest first), so they pad little; their metrics do not depend on the order. Predict keeps
            the file's order.
        augmentation: on-the-fly edits of training texts; None for none.

    Raises:
        InvalidArgumentError: a bad augmentation (one asking for validation data among them).
        FileNotFoundError, DataFileError: see ``lit_llm.datamodules.files``; plus unseen labels in
            validation/test and labels outside the configured set.

    Example::
        dm = TextClassificationDataModule("data/models/all-MiniLM-L6-v2", train_file="train.csv", test_file="test.csv")
    """

    def __init__(
        self,
        tokenizer: str,
        train_file: str | None = None,
        validation_file: str | None = None,
        test_file: str | None = None,
        predict_file: str | None = None,
        dataset_name: str | None = None,
        dataset_config: str | None = None,
        text_field: str = "text",
        text_pair_field: str | None = None,
        label_field: str = "label",
        labels: list[str] | None = None,
        multi_label: bool = False,
        regression: bool = False,
        label_separator: str = ";",
        val_fraction: float = 0.1,
        seed: int = 42,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        group_by_length: bool = False,
        augmentation: TextAugmentation | None = None,
        sort_eval_by_length: bool = False,
    ) -> None:
        super().__init__()
        if dataset_name is None and not any((train_file, validation_file, test_file, predict_file)):
            raise ValueError("TextClassificationDataModule: give train_file / test_file / ... or dataset_name.")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction={val_fraction!r}: must be in (0, 1), e.g. 0.1.")
        if max_length < 2:
            raise ValueError(f"max_length={max_length!r}: must be at least 2 tokens.")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: must be >= 1.")
        if regression and (multi_label or labels is not None):
            raise InvalidArgumentError(
                f"regression=True with {'multi_label=True' if multi_label else f'labels={labels!r}'}: a regression "
                "target is one number per example, named by label_field; drop multi_label / labels."
            )
        # logger=False: Lightning refuses to log when module and datamodule hparams share a key with different
        # values (tokenizer, multi_label); the CLI logs the whole config instead.
        self.save_hyperparameters(logger=False, ignore=["augmentation"])
        # As plain data: a checkpoint holds only what lit-llm's weights_only loader accepts.
        self.hparams["augmentation"] = dataclasses.asdict(augmentation) if augmentation is not None else None
        self._labels_configured = labels is not None
        self.tokenizer_name = tokenizer
        self.files = {"train": train_file, "validation": validation_file, "test": test_file, "predict": predict_file}
        self.dataset_name = dataset_name
        self.dataset_config = dataset_config
        self.text_field = text_field
        self.text_pair_field = text_pair_field
        self.label_field = label_field
        self.multi_label = multi_label
        self.regression = regression
        self.label_separator = label_separator
        self.val_fraction = val_fraction
        self.seed = seed
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.num_workers = num_workers
        self.group_by_length = group_by_length
        self.sort_eval_by_length = sort_eval_by_length
        self.augmentation = augmentation
        self._labels: list[str] | None = list(labels) if labels is not None else None
        self._raw: dict[str, datasets.Dataset] = {}
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self.datasets: dict[str, datasets.Dataset] = {}
        self.truncated: dict[str, int] = {}

    # ---------------------------------------------------------------- loading
    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_name)
        return self._tokenizer

    def _source(self, split: str) -> str:
        file = self.files.get(split)
        return f"{split} file {file!r}" if file else f"dataset {self.dataset_name!r} split {split!r}"

    def _load_raw(self, split: str) -> datasets.Dataset | None:
        if split in self._raw:
            return self._raw[split]
        file = self.files.get(split)
        if file is not None:
            dataset = load_table(file, split)
        elif self.dataset_name is not None:
            hub_split = {"validation": "validation", "predict": "test"}.get(split, split)
            try:
                dataset = datasets.load_dataset(self.dataset_name, self.dataset_config, split=hub_split)
            except ValueError as err:
                if split == "train":
                    raise
                if "split" not in str(err).lower():
                    raise
                return None
        else:
            return None
        needs_label = split != "predict"
        require_columns(
            dataset,
            {
                "text_field": self.text_field,
                "text_pair_field": self.text_pair_field,
                "label_field": self.label_field if needs_label else None,
            },
            self._source(split),
        )
        check_texts(dataset[self.text_field], self.text_field, self._source(split), file)
        if self.text_pair_field:
            check_texts(dataset[self.text_pair_field], self.text_pair_field, self._source(split), file)
        self._raw[split] = dataset
        return dataset

    def _label_lists(self, values: list[Any]) -> list[list[str]]:
        out = []
        for v in values:
            if self.multi_label:
                items = v if isinstance(v, (list, tuple)) else ([] if v is None else str(v).split(self.label_separator))
                out.append([str(x).strip() for x in items if str(x).strip()])
            else:
                out.append([] if v is None else [str(v)])
        return out

    @property
    def labels(self) -> list[str]:
        """Label names in id order: the configured ones, or the sorted set found in the training split."""
        if self.regression:
            return [self.label_field]
        if self._labels is None:
            train = self._load_raw("train")
            if train is None:
                raise ValueError(
                    "TextClassificationDataModule: cannot infer the labels without a training split; "
                    "pass labels=[...] (e.g. the id2label of the model you test)."
                )
            found = Counter(x for ls in self._label_lists(train[self.label_field]) for x in ls)
            self._labels = sorted(found)
            rank_zero_info(f"labels inferred from train: {dict(sorted(found.items()))}")
        return self._labels

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def _encode_targets(self, dataset: datasets.Dataset, split: str) -> list[float]:
        """The regression targets as floats; the first value that is not a finite number is an error."""
        out: list[float] = []
        for i, value in enumerate(dataset[self.label_field]):
            number = _as_number(value)
            if number is None:
                file = self.files.get(split)
                where = row_location(file, i) if file else f"{self._source(split)} row {i}"
                shown = "empty" if value is None or (isinstance(value, str) and not value.strip()) else repr(value)
                raise DataFileError(
                    f"{where}: {self.label_field!r} is {shown}, not a number; regression needs a finite real value "
                    "in every row (e.g. 3.5). Fix or remove the row, or set regression: false for class labels."
                )
            out.append(number)
        return out

    def _encode_labels(self, dataset: datasets.Dataset, split: str) -> list[Any]:
        if self.regression:
            return self._encode_targets(dataset, split)
        label_ids = {name: i for i, name in enumerate(self.labels)}
        encoded: list[Any] = []
        for i, names in enumerate(self._label_lists(dataset[self.label_field])):
            if not names and not self.multi_label:
                raise DataFileError(
                    f"{row_location(self.files.get(split), i)}: empty {self.label_field!r} in the {split} split; "
                    "every example needs a label."
                )
            unknown = [n for n in names if n not in label_ids]
            if unknown:
                hint = "never seen in train" if self._labels_from_train else "not in the configured labels"
                raise DataFileError(
                    f"{row_location(self.files.get(split), i) if self.files.get(split) else self._source(split)}: "
                    f"label {unknown[0]!r} is {hint} ({', '.join(self.labels)}). "
                    "Fix the label, add it to `labels`, or add examples of it to the training set."
                )
            if self.multi_label:
                vec = [0.0] * len(label_ids)
                for n in names:
                    vec[label_ids[n]] = 1.0
                encoded.append(vec)
            else:
                encoded.append(label_ids[names[0]])
        return encoded

    @property
    def _labels_from_train(self) -> bool:
        return not self._labels_configured

    def _tokenize(
        self, dataset: datasets.Dataset, split: str, keep_text: bool, keep_pair: bool = False
    ) -> datasets.Dataset:
        tokenizer, max_length = self.tokenizer, self.max_length
        text_field, pair_field = self.text_field, self.text_pair_field

        def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
            pairs = batch[pair_field] if pair_field else None
            enc = tokenizer(batch[text_field], pairs, truncation=True, max_length=max_length)
            full = tokenizer(batch[text_field], pairs, truncation=False, return_attention_mask=False)
            enc["truncated"] = [len(ids) > max_length for ids in full["input_ids"]]
            if keep_text:
                enc["text"] = batch[text_field]
            if keep_pair and pair_field:
                enc["text_pair"] = batch[pair_field]
            return enc

        remove = [c for c in dataset.column_names if c != "labels"]
        # datasets caches this map by fingerprint (inputs + function + tokenizer), so a second run reuses it.
        mapped = dataset.map(encode, batched=True, remove_columns=remove, desc=f"tokenizing {split}")
        n_trunc = int(sum(mapped["truncated"]))
        self.truncated[split] = n_trunc
        if n_trunc:
            rank_zero_info(
                f"{split}: {n_trunc} of {len(mapped)} examples ({n_trunc / len(mapped):.1%}) "
                f"truncated to max_length={max_length} tokens"
            )
        return mapped.remove_columns("truncated")

    def _prepare_split(self, split: str) -> datasets.Dataset | None:
        raw = self._load_raw(split)
        if raw is None:
            return None
        if split != "predict":
            raw = raw.add_column("labels", self._encode_labels(raw, split))
        augmented = split == "train" and self.augmentation is not None  # its raw texts are edited when loaded
        return self._tokenize(raw, split, keep_text=split == "predict" or augmented, keep_pair=augmented)

    @property
    def _use_prepared_validation(self) -> bool:
        return self.files["validation"] is not None or (
            self.dataset_name is not None and self._load_raw("validation") is not None
        )

    def setup(self, stage: str) -> None:
        if stage in ("fit", "validate"):
            if "train" not in self.datasets and stage == "fit":
                train = self._prepare_split("train")
                if train is None:
                    raise ValueError("TextClassificationDataModule: fit needs train_file or dataset_name.")
                if self._use_prepared_validation:
                    self.datasets["train"] = train
                else:
                    self.datasets["train"], val = self._carve_validation(train)
                    # Validation is never augmented: it needs no raw texts.
                    self.datasets["validation"] = val.remove_columns(
                        [c for c in ("text", "text_pair") if c in val.column_names]
                    )
            if "validation" not in self.datasets:
                val = self._prepare_split("validation")
                if val is None and stage == "validate":
                    raise ValueError("TextClassificationDataModule: validate needs validation_file.")
                if val is not None:
                    self.datasets["validation"] = val
        if stage == "test" and "test" not in self.datasets:
            test = self._prepare_split("test")
            if test is None:
                raise ValueError("TextClassificationDataModule: test needs test_file (or a dataset with a test split).")
            self.datasets["test"] = test
        if stage == "predict" and "predict" not in self.datasets:
            pred = self._prepare_split("predict")
            if pred is None:
                raise ValueError("TextClassificationDataModule: predict needs predict_file.")
            self.datasets["predict"] = pred

    def _carve_validation(self, train: datasets.Dataset) -> tuple[datasets.Dataset, datasets.Dataset]:
        stratify = None
        if not self.multi_label and not self.regression:
            counts = Counter(train["labels"])
            # Stratify only when every class can appear on both sides.
            if min(counts.values()) >= 2 and len(train) * self.val_fraction >= len(counts):
                train = train.cast_column("labels", datasets.ClassLabel(names=self.labels))
                stratify = "labels"
        parts = train.train_test_split(test_size=self.val_fraction, seed=self.seed, stratify_by_column=stratify)
        rank_zero_info(
            f"no validation file: carved {len(parts['test'])} of {len(train)} training examples "
            f"({'stratified, ' if stratify else ''}seed {self.seed})"
        )
        return parts["train"], parts["test"]

    # ---------------------------------------------------------------- loaders
    def _train_lengths(self) -> list[int] | None:
        if not self.group_by_length or "train" not in self.datasets:
            return None
        return [len(ids) for ids in self.datasets["train"].with_format("python")["input_ids"]]

    def _loader(self, split: str, shuffle: bool, batch_size: int) -> DataLoader:
        # Only the requested split needs the python format (plain lists for the padding collator).
        prepared = {split: self.datasets[split].with_format("python")} if split in self.datasets else {}
        return split_loader(
            prepared,
            split,
            batch_size=batch_size,
            shuffle=shuffle,
            collate_fn=_PadKeepingText(self.tokenizer),
            num_workers=self.num_workers,
            seed=self.seed,
            lengths=self._train_lengths() if split == "train" else None,
            sort_eval_by_length=self.sort_eval_by_length,
        )

    def train_dataloader(self) -> DataLoader:
        if self.augmentation is None:
            return self._loader("train", True, self.batch_size)
        if "train" not in self.datasets:
            raise RuntimeError("no train split: call setup('fit') first or give the train file")
        train = self.datasets["train"].with_format("python")
        texts = list(train["text"]) + (list(train["text_pair"]) if "text_pair" in train.column_names else [])
        augmenter = Augmenter(self.augmentation, training_vocabulary(texts, self.augmentation.protect))
        transform = _AugmentTexts(augmenter, self.tokenizer, self.max_length)
        return augmented_loader(
            AugmentedDataset(train, transform, self.seed),
            batch_size=self.batch_size,
            collate_fn=_PadKeepingText(self.tokenizer),
            num_workers=self.num_workers,
            seed=self.seed,
            lengths=self._train_lengths(),
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", False, self.eval_batch_size)

    def describe(self) -> dict[str, Any]:
        """Sizes of the prepared splits and truncation counts, for logs and reports."""
        return {
            "labels": self.labels,
            "sizes": {k: len(v) for k, v in self.datasets.items()},
            "truncated": dict(self.truncated),
            "files": {k: str(Path(v)) for k, v in self.files.items() if v},
        }


def _as_number(value: Any) -> float | None:
    """``value`` as a finite float (numbers and numeric strings), else None; booleans are not numbers here."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
