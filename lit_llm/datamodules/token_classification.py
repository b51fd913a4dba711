"""Tagged sentences (NER, chunking) from CoNLL / JSON files or an HF dataset, aligned to sub-word tokens."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any, Literal

import datasets
import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader
from transformers import DataCollatorForTokenClassification, PreTrainedTokenizerBase

from lit_llm.datamodules.augmented import AugmentedDataset, augmented_loader
from lit_llm.datamodules.conll import TaggedSentence, check_tags, read_tagged
from lit_llm.datamodules.files import DataFileError
from lit_llm.datamodules.loaders import split_loader
from lit_llm.text.entities import (
    TagScheme,
    check_scheme,
    entity_types,
    extract_entities,
    labels_for_types,
    parse_tag,
    tags_from_entities,
)
from lit_llm.hf import load_tokenizer
from lit_llm.text.augmentation import Augmenter, TextAugmentation, training_vocabulary

__all__ = ["TokenClassificationDataModule", "align_labels"]

_SPLITS = ("train", "validation", "test", "predict")
IGNORE_INDEX = -100  # what torch's cross entropy and DataCollatorForTokenClassification skip


def align_labels(
    word_ids: list[int | None], word_tags: list[str], scheme: TagScheme, label_all_subtokens: bool = False
) -> list[str | None]:
    """Tags per sub-word token: the first sub-token of each word gets the word's tag, the others None (ignored).

    With ``label_all_subtokens`` every sub-token is tagged, entity spans re-encoded at sub-token level so the
    sequence stays well formed (``B-PER`` over ``Jo ##hn`` gives ``B-PER I-PER``; in BIOES ``S-PER`` gives
    ``B-PER E-PER``). Special tokens get None.

    Args:
        word_ids: the tokenizer's ``word_ids()``: the word index of each sub-token, None for special tokens.
        word_tags: one tag per word (the words may be truncated away at the end).
        scheme: ``BIO`` or ``BIOES``.
        label_all_subtokens: tag continuation sub-tokens too.

    Example::
        >>> align_labels([None, 0, 0, 1, None], ["B-PER", "O"], "BIO")
        [None, 'B-PER', None, 'O', None]
    """
    if not label_all_subtokens:
        out: list[str | None] = []
        prev = None
        for w in word_ids:
            out.append(word_tags[w] if w is not None and w != prev else None)
            prev = w
        return out
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for k, w in enumerate(word_ids):
        if w is not None:
            first.setdefault(w, k)
            last[w] = k
    spans = []
    for ent in extract_entities(word_tags, scheme, "strict"):
        words = [w for w in range(ent.start, ent.end) if w in first]  # words cut by truncation have no sub-tokens
        if words:
            spans.append(ent._replace(start=first[words[0]], end=last[words[-1]] + 1))
    sub_tags: list[str | None] = list(tags_from_entities(spans, len(word_ids), scheme))
    return [None if w is None else t for w, t in zip(word_ids, sub_tags)]


class _Collator:
    """DataCollatorForTokenClassification plus ``word_ids`` (B, T), -1 where no word, and the words themselves."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.pad = DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        features = [dict(f) for f in features]
        word_ids = [f.pop("word_ids") for f in features]
        words = [f.pop("words") for f in features] if "words" in features[0] else None
        batch = dict(self.pad(features))
        length = batch["input_ids"].shape[1]
        padded = torch.full((len(features), length), -1, dtype=torch.long)  # (B, T)
        for i, ids in enumerate(word_ids):
            padded[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        batch["word_ids"] = padded
        if words is not None:
            batch["words"] = words
        return batch


class TokenClassificationDataModule(pl.LightningDataModule):
    """Train / validation / test / predict splits of tagged sentences for token classification (NER).

    Files are CoNLL columns (``token<TAB>tag``, blank line between sentences, ``-DOCSTART-`` skipped; any
    extension but ``.json`` / ``.jsonl``) or JSON / JSONL records with a token list and a tag list; or give
    ``dataset_name`` for ``datasets.load_dataset`` (or a directory saved with ``save_to_disk``), whose tag column
    may hold strings or ``ClassLabel`` ids. Every tag is checked against ``tag_scheme`` and ``labels`` before
    tokenizing, and word tags are aligned to sub-word tokens (first sub-token tagged, the rest ignored).

    Validation and test are always scored on first sub-tokens, one tag per word, as seqeval and conlleval score
    words; ``label_all_subtokens`` changes only the training targets. Words past ``max_length`` are dropped from
    scoring (the count of truncated sentences is reported).

    Augmentation (:class:`~lit_llm.text.augmentation.TextAugmentation`) edits training sentences on the fly, each
    epoch anew, never validation / test / predict ones, and only in ways that keep every entity and the tag
    alignment: swaps between words of the same tag, deletions of ``O`` words, ``O`` insertions outside entities,
    replacements of ``O`` words. Sentence ``i`` of epoch ``e`` is edited with its own generator seeded by
    ``(seed, e, i)``, so an exact resume replays the interrupted epoch's augmented batches identically.

    Modules read ``labels`` from this datamodule when they are not given theirs; every batch carries
    ``word_ids`` (B, T), -1 for special tokens and padding, and predict batches also carry ``words``.

    Args:
        tokenizer: a fast tokenizer directory or hub id (usually the model's).
        train_file: training file.
        validation_file: validation file.
        test_file: test file.
        predict_file: sentences to tag with ``predict`` (tags optional; CoNLL lines may be bare tokens).
        dataset_name: an HF dataset (name, local script, data directory or ``save_to_disk`` directory).
        dataset_config: its configuration name.
        tokens_column: the token-list column / JSON key.
        tags_column: the tag-list column / JSON key.
        tag_scheme: ``BIO`` (IOB2) or ``BIOES``.
        labels: the tag names in id order; None takes ``O`` then every type's tags found in the labelled splits.
        label_all_subtokens: also train on continuation sub-tokens instead of ignoring them.
        repair_tags: rewrite ill-formed sequences (``I-X`` with no ``B-X``) instead of raising.
        max_length: truncation length in sub-word tokens.
        batch_size: training micro-batch per device.
        eval_batch_size: batch for validation / test / predict (default: 2 x batch_size).
        num_workers: dataloader workers.
        group_by_length: group training batches by length (as the HF Trainer's
            ``train_sampling_strategy="group_by_length"``), so dynamic padding pads little; the order is still
            shuffled, seeded and resumable (see :class:`~lit_llm.datamodules.ResumableSampler`).
        sort_eval_by_length: validation and test batches of examples of about one length (the split sorted by
            length, shortest first), so they pad little; their metrics do not depend on the order. Predict keeps
            the file's order.
        seed: seed of the training shuffle (and of the augmentation).
        augmentation: on-the-fly edits of training sentences that keep the tag alignment; None for none.

    Raises:
        ValueError: an unknown tag scheme, no data source, bad sizes.
        FileNotFoundError, DataFileError: see :mod:`lit_llm.datamodules.conll`: a malformed line, an ill-formed
            tag sequence, a tag outside ``labels``; each error names the file and line.

    Example::
        dm = TokenClassificationDataModule("data/models/all-MiniLM-L6-v2", train_file="data/wnut16/train.conll",
                                           validation_file="data/wnut16/validation.conll")
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
        tokens_column: str = "tokens",
        tags_column: str = "tags",
        tag_scheme: Literal["BIO", "BIOES"] = "BIO",
        labels: list[str] | None = None,
        label_all_subtokens: bool = False,
        repair_tags: bool = False,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        group_by_length: bool = False,
        seed: int = 42,
        augmentation: TextAugmentation | None = None,
        sort_eval_by_length: bool = False,
    ) -> None:
        super().__init__()
        self.tag_scheme: TagScheme = check_scheme(tag_scheme)
        if dataset_name is None and not any((train_file, validation_file, test_file, predict_file)):
            raise ValueError("TokenClassificationDataModule: give train_file / test_file / ... or dataset_name.")
        if max_length < 2:
            raise ValueError(f"max_length={max_length!r}: must be at least 2 tokens.")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: must be >= 1.")
        if labels is not None:
            bad = [t for t in labels if not _is_tag(t, self.tag_scheme)]
            if bad or "O" not in labels or len(set(labels)) != len(labels):
                raise ValueError(
                    f"labels={labels!r}: need unique {self.tag_scheme} tags ('O', 'B-TYPE', ...) including 'O'"
                    + (f"; not valid: {bad}" if bad else "")
                    + "."
                )
        # logger=False: Lightning refuses to log when module and datamodule hparams share a key with different
        # values (tokenizer=None vs a path); the CLI logs the whole config instead.
        self.save_hyperparameters(logger=False, ignore=["augmentation"])
        # As plain data: a checkpoint holds only what lit-llm's weights_only loader accepts.
        self.hparams["augmentation"] = dataclasses.asdict(augmentation) if augmentation is not None else None
        self.tokenizer_name = tokenizer
        self.files = {"train": train_file, "validation": validation_file, "test": test_file, "predict": predict_file}
        self.dataset_name = dataset_name
        self.dataset_config = dataset_config
        self.tokens_column = tokens_column
        self.tags_column = tags_column
        self.label_all_subtokens = label_all_subtokens
        self.repair_tags = repair_tags
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.num_workers = num_workers
        self.group_by_length = group_by_length
        self.sort_eval_by_length = sort_eval_by_length
        self.seed = seed
        self.augmentation = augmentation
        self._labels: list[str] | None = list(labels) if labels is not None else None
        self._sentences: dict[str, list[TaggedSentence] | None] = {}
        self._hf: datasets.DatasetDict | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self.datasets: dict[str, list[dict[str, Any]]] = {}
        self.truncated: dict[str, int] = {}
        self.repaired: dict[str, int] = {}

    # ---------------------------------------------------------------- reading
    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:
            tok = load_tokenizer(self.tokenizer_name)
            if not tok.is_fast:
                raise ValueError(
                    f"tokenizer {self.tokenizer_name!r} is a slow (Python) tokenizer; token classification needs a "
                    "fast one for word_ids(). Save the model with its tokenizer.json."
                )
            self._tokenizer = tok
        return self._tokenizer

    def _hf_split(self, split: str) -> list[TaggedSentence] | None:
        if self._hf is None:
            path = Path(str(self.dataset_name)).expanduser()
            if (path / "dataset_dict.json").is_file():
                self._hf = datasets.load_from_disk(str(path))  # type: ignore[assignment]
            else:
                self._hf = datasets.load_dataset(self.dataset_name, self.dataset_config)  # type: ignore[assignment]
        assert self._hf is not None
        name = {"predict": "test"}.get(split, split)
        if name not in self._hf:
            return None
        ds = self._hf[name]
        source = f"dataset {self.dataset_name!r} split {name!r}"
        for column in (self.tokens_column, self.tags_column):
            if column not in ds.column_names:
                raise DataFileError(
                    f"{source}: no column {column!r}. Columns found: {', '.join(ds.column_names)}. "
                    "Set tokens_column / tags_column."
                )
        feature = ds.features[self.tags_column]
        names = getattr(getattr(feature, "feature", None), "names", None)  # Sequence(ClassLabel) -> tag names
        out = []
        for i, row in enumerate(ds):
            tags = [names[t] if names else str(t) for t in row[self.tags_column]]
            if len(tags) != len(row[self.tokens_column]):
                raise DataFileError(f"{source} row {i}: {len(row[self.tokens_column])} tokens but {len(tags)} tags.")
            if row[self.tokens_column]:
                out.append(TaggedSentence(list(row[self.tokens_column]), tags, f"{source} row {i}"))
        return out

    def sentences(self, split: str) -> list[TaggedSentence] | None:
        """The checked sentences of ``split`` (tags repaired if ``repair_tags``), or None if there is no such split."""
        if split in self._sentences:
            return self._sentences[split]
        file = self.files.get(split)
        sents: list[TaggedSentence] | None
        if file is not None:
            sents = read_tagged(file, self.tokens_column, self.tags_column, labelled=split != "predict")
        elif self.dataset_name is not None:
            sents = self._hf_split(split)
        else:
            sents = None
        if sents is not None:
            # Labels come from the labelled splits themselves when not configured, so check the scheme first.
            self.repaired[split] = check_tags(sents, self.tag_scheme, None, self.repair_tags)
            if self.repaired[split]:
                rank_zero_warn(f"{split}: repaired {self.repaired[split]} ill-formed {self.tag_scheme} tag sequences")
            if self._labels is not None:
                check_tags(sents, self.tag_scheme, self._labels)
        self._sentences[split] = sents
        return sents

    @property
    def labels(self) -> list[str]:
        """Tag names in id order: the configured ones, or ``O`` then each type's tags (types sorted) found in data.

        Inferred from every labelled split given (train, validation, test), so fit and test see the same ids.
        """
        if self._labels is None:
            found: list[str] = []
            for split in ("train", "validation", "test"):
                for sent in self.sentences(split) or []:
                    found.extend(sent.tags or [])
            if not found:
                raise ValueError(
                    "TokenClassificationDataModule: no labelled split to infer the labels from; pass labels=[...] "
                    "(e.g. the id2label values of the model you predict with)."
                )
            self._labels = labels_for_types(entity_types(sorted(set(found))), self.tag_scheme)
            rank_zero_info(f"labels inferred from data: {self._labels}")
        return self._labels

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    # ---------------------------------------------------------------- tokenizing
    def _encode(self, sents: list[TaggedSentence], split: str) -> list[dict[str, Any]]:
        label_ids = {t: i for i, t in enumerate(self.labels)} if split != "predict" else {}
        all_subtokens = self.label_all_subtokens and split == "train"
        enc = self.tokenizer(
            [s.tokens for s in sents], is_split_into_words=True, truncation=True, max_length=self.max_length
        )
        examples, n_trunc = [], 0
        for i, sent in enumerate(sents):
            word_ids = enc.word_ids(i)
            seen = {w for w in word_ids if w is not None}
            n_trunc += bool(seen) and max(seen) < len(sent.tokens) - 1
            tags = sent.tags if split != "predict" else None
            example = _example(enc, i, tags, label_ids, self.tag_scheme, all_subtokens)
            if split == "predict":
                example["words"] = sent.tokens
            examples.append(example)
        self.truncated[split] = n_trunc
        if n_trunc:
            rank_zero_info(
                f"{split}: {n_trunc} of {len(sents)} sentences truncated to max_length={self.max_length} sub-tokens; "
                "their cut words are not scored"
            )
        return examples

    def setup(self, stage: str) -> None:
        needed = {"fit": ("train", "validation"), "validate": ("validation",), "test": ("test",),
                  "predict": ("predict",)}[stage]
        for split in needed:
            if split in self.datasets:
                continue
            sents = self.sentences(split)
            if sents is None:
                if split == "validation" and stage == "fit":
                    continue  # fit without validation is allowed
                what = "dataset_name with that split" if self.dataset_name else f"{split}_file"
                raise ValueError(f"TokenClassificationDataModule: {stage} needs {what}.")
            self.datasets[split] = self._encode(sents, split)

    # ---------------------------------------------------------------- loaders
    def _train_lengths(self) -> list[int] | None:
        if not self.group_by_length or "train" not in self.datasets:
            return None
        return [len(example["input_ids"]) for example in self.datasets["train"]]

    def _loader(self, split: str, shuffle: bool, batch_size: int) -> DataLoader:
        return split_loader(self.datasets, split, batch_size=batch_size, shuffle=shuffle,
                            collate_fn=_Collator(self.tokenizer), num_workers=self.num_workers, seed=self.seed,
                            lengths=self._train_lengths() if split == "train" else None,
                            sort_eval_by_length=self.sort_eval_by_length)

    def train_dataloader(self) -> DataLoader:
        if self.augmentation is None:
            return self._loader("train", True, self.batch_size)
        if "train" not in self.datasets:
            raise RuntimeError("no train split: call setup('fit') first or give the train file")
        sentences = self.sentences("train") or []
        # Inserted words are tagged O: draw them from words tagged O, never from entities.
        texts = [" ".join(w for w, t in zip(s.tokens, s.tags or []) if t == "O") for s in sentences]
        augmenter = Augmenter(self.augmentation, training_vocabulary(texts, self.augmentation.protect))
        transform = _AugmentSentences(augmenter, self.tokenizer, self.labels, self.tag_scheme,
                                      self.label_all_subtokens, self.max_length)
        return augmented_loader(
            AugmentedDataset(list(zip(sentences, self.datasets["train"])), transform, self.seed),
            batch_size=self.batch_size,
            collate_fn=_Collator(self.tokenizer),
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
        """Sizes of the prepared splits, truncation and repair counts, for logs and reports."""
        return {
            "labels": self.labels,
            "tag_scheme": self.tag_scheme,
            "sizes": {k: len(v) for k, v in self.datasets.items()},
            "truncated": dict(self.truncated),
            "repaired": dict(self.repaired),
            "files": {k: str(Path(v)) for k, v in self.files.items() if v},
        }


def _example(
    enc: Any, i: int, tags: list[str] | None, label_ids: dict[str, int], scheme: TagScheme, all_subtokens: bool
) -> dict[str, Any]:
    """Model inputs of sentence ``i`` of a batch encoding, with its aligned label ids when ``tags`` is given."""
    word_ids = enc.word_ids(i)
    example: dict[str, Any] = {
        "input_ids": enc["input_ids"][i],
        "attention_mask": enc["attention_mask"][i],
        "word_ids": [-1 if w is None else w for w in word_ids],
    }
    if "token_type_ids" in enc:
        example["token_type_ids"] = enc["token_type_ids"][i]
    if tags is not None:
        aligned = align_labels(word_ids, tags, scheme, all_subtokens)
        example["labels"] = [IGNORE_INDEX if t is None else label_ids[t] for t in aligned]
    return example


class _AugmentSentences:
    """The transform of an augmented training sentence: tag-preserving edits, then tokenizing and aligning again."""

    def __init__(self, augmenter: Augmenter, tokenizer: PreTrainedTokenizerBase, labels: list[str],
                 scheme: TagScheme, all_subtokens: bool, max_length: int) -> None:
        self.augmenter, self.tokenizer, self.scheme = augmenter, tokenizer, scheme
        self.label_ids = {t: i for i, t in enumerate(labels)}
        self.all_subtokens, self.max_length = all_subtokens, max_length

    def __call__(self, item: tuple[TaggedSentence, dict[str, Any]], rng: random.Random) -> dict[str, Any]:
        sentence, encoded = item
        edited = self.augmenter.words(sentence.tokens, rng, sentence.tags)
        if edited is None:
            return encoded  # left as it is: the pre-encoded example
        words, tags = edited
        enc = self.tokenizer([words], is_split_into_words=True, truncation=True, max_length=self.max_length)
        return _example(enc, 0, tags, self.label_ids, self.scheme, self.all_subtokens)


def _is_tag(tag: str, scheme: TagScheme) -> bool:
    try:
        prefix, _ = parse_tag(tag)
    except ValueError:
        return False
    return prefix in ("O", "B", "I") or scheme == "BIOES"
