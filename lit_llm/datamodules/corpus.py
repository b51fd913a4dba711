"""``TextCorpusDataModule``: raw text files or an HF dataset, tokenized, packed and served for pre-training.

The data side knows nothing of the objective: it yields token blocks with ``special_tokens_mask`` and
``word_starts``; the masked-LM module masks them, the causal-LM module shifts them. Tokenization runs in
``datasets.map`` (batched, ``num_proc`` processes) whose cache files are keyed by the inputs' fingerprint,
so a second run on unchanged files and settings re-uses them. ``streaming=True`` reads the corpus lazily with
``datasets``' streaming primitives: split over DDP ranks at the source (whole files per rank when their number
divides), shuffled through a buffer with a new order each epoch from ``seed``, and resumed mid-epoch exactly
(see :class:`~lit_llm.datamodules.resumable.ResumableStreamLoader`).

Text written without spaces (Chinese) gets its ``word_starts`` from a segmenter or from pre-segmented text
(``word_boundaries``, see :mod:`lit_llm.text.segmentation`), computed in the same cached ``map``, so whole-word
masking masks whole Chinese words, not single characters.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import unicodedata
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, IterableDataset
from typing_extensions import override

from lit_llm.datamodules.packing import (
    BlockPacker,
    collate_blocks,
    make_nsp_pairs,
    pack_blocks,
    tokenize_documents,
)
from lit_llm.datamodules.resumable import ResumableDataLoader, ResumableStreamLoader
from lit_llm.errors import InvalidArgumentError
from lit_llm.hf import load_tokenizer
from lit_llm.text.segmentation import WORD_BOUNDARIES, WordBoundaries, parse_tagged, segment, word_starts_for_texts
from lit_llm.text.sentence_order import check_nsp_negatives, make_sop_pairs
from lit_llm.text.tokenizer_training import TokenizerKind, train_tokenizer

__all__ = ["TextCorpusDataModule", "StreamingBlocks", "NspNegatives", "is_val_document", "stream_documents",
           "tokenize_texts"]

log = logging.getLogger(__name__)

_BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
_HUGE = 1_000_000  # HF's "no limit" model_max_length is ~1e30

NspNegatives = Literal["random", "swapped"]


def tokenize_texts(
    texts: list[Any],
    tokenizer: Any,
    max_length: int | None,
    add_special_tokens: bool,
    word_boundaries: WordBoundaries = "tokenizer",
    where: str = "",
) -> dict[str, list[list[int]]]:
    """:func:`~lit_llm.datamodules.packing.tokenize_documents`, with ``word_starts`` from ``word_boundaries``.

    ``"tokenizer"`` keeps the tokenizer's own words (English: ``##`` pieces follow their word). ``"jieba"``,
    ``"tagged"`` and ``"whitespace"`` segment each text (:func:`lit_llm.text.segmentation.segment`; a tagged or
    whitespace text is read as its words joined back) and flag the first token of each segmented word from the
    tokenizer's offsets.

    Example::
        cols = tokenize_texts(["北京/ns 大学/n"], tokenizer, None, True, "tagged")  # the text read is 北京大学
    """
    if word_boundaries == "tokenizer":
        return tokenize_documents(texts, tokenizer, max_length=max_length, add_special_tokens=add_special_tokens)
    segmented = [segment(t if isinstance(t, str) else "", word_boundaries, where) for t in texts]
    plain = [text for text, _ in segmented]
    columns = tokenize_documents(plain, tokenizer, max_length=max_length, add_special_tokens=add_special_tokens)
    flags = word_starts_for_texts(plain, [spans for _, spans in segmented], tokenizer, max_length=max_length,
                                  add_special_tokens=add_special_tokens)
    for i, (ids, doc_flags) in enumerate(zip(columns["input_ids"], flags)):
        if not ids:  # an empty line: no document
            continue
        appended = len(ids) - len(doc_flags)  # tokenize_documents may close a document with a separator
        if appended not in (0, 1):
            raise RuntimeError(f"word boundaries of {plain[i][:40]!r} do not align with its tokens (a bug).")
        columns["word_starts"][i] = doc_flags + [0] * appended
    return columns


def _cjk_share(texts: list[str]) -> float:
    """Fraction of the non-space characters that are CJK ideographs."""
    chars = [c for t in texts for c in t if not c.isspace()]
    cjk = sum(1 for c in chars if unicodedata.name(c, "").startswith("CJK UNIFIED IDEOGRAPH"))
    return cjk / max(1, len(chars))


def _resolve_files(data_files: str | list[str]) -> tuple[str, list[str]]:
    """Expand globs; return the ``datasets`` builder name and the sorted file list."""
    patterns = [data_files] if isinstance(data_files, str) else list(data_files)
    files: list[str] = []
    for pattern in patterns:
        matched = sorted(glob.glob(str(Path(pattern).expanduser()), recursive=True))
        if not matched:
            raise FileNotFoundError(f"data_files: {pattern!r} matches no file; give a path, a list or a glob.")
        files.extend(matched)
    suffixes = {"".join(Path(f).suffixes[-2:-1] if f.endswith((".gz", ".bz2", ".zst")) else Path(f).suffix)
                for f in files}
    builders = {_BUILDERS.get(s.lower()) for s in suffixes}
    if None in builders or len(builders) != 1:
        raise ValueError(
            f"data_files {files!r}: need one kind of file among {sorted(_BUILDERS)} (got suffixes {sorted(suffixes)})."
        )
    return builders.pop(), files  # type: ignore[return-value]


def is_val_document(text: str, every: int) -> bool:
    """Whether a streamed document belongs to validation: 1 in ``every`` documents, chosen by a hash of its text.

    A stream is read in an order that changes with the shuffle, the epoch and the sharding over ranks and workers,
    so its split cannot use the document's position (as the in-memory split does); a content hash keeps every
    document on the same side in every epoch and on every rank (and puts duplicates on the same side).
    """
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return every > 0 and int.from_bytes(digest, "little") % every == 0


def _keep(text: Any, every: int, val: bool) -> bool:
    return bool(text) and is_val_document(text, every) == val


def stream_documents(
    raw: Any,
    text_field: str,
    *,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    shuffle_buffer: int = 10_000,
    val_every: int = 0,
    val: bool = False,
) -> Any:
    """This rank's training (or validation) documents of an HF ``IterableDataset``, shuffled from ``seed``.

    Built from ``datasets``' own primitives: ``filter`` (non-empty texts of the split, see
    :func:`is_val_document`), ``IterableDataset.shuffle(seed, buffer_size)`` (the shard order and a buffer of
    ``shuffle_buffer`` documents; ``set_epoch`` on the result gives each epoch its own order, the same for the
    same seed), then ``datasets.distributed.split_dataset_by_node``: when the number of shards (files) is a
    multiple of ``world_size`` each rank reads only its own files, otherwise each rank reads the stream and keeps
    one document in ``world_size``. Validation is not shuffled.

    Args:
        raw: the corpus as a ``datasets.IterableDataset`` with a ``text_field`` column.
        text_field: the column that holds the text.
        rank: this process's rank; world_size: the number of ranks.
        seed: the shuffle seed (identical on every rank, so the ranks agree on the shard order).
        shuffle_buffer: documents held in the shuffle buffer; 0 keeps the stream's order.
        val_every: 1 in ``val_every`` documents is for validation (0: none).
        val: return the validation documents instead of the training ones.

    Example::
        docs = stream_documents(load_dataset("json", data_files=files, split="train", streaming=True), "text",
                                rank=trainer.global_rank, world_size=trainer.world_size, seed=42)
        docs.set_epoch(epoch)
    """
    from datasets.distributed import split_dataset_by_node

    docs = raw.filter(_keep, input_columns=[text_field], fn_kwargs={"every": val_every, "val": val})
    if not val and shuffle_buffer > 0:
        docs = docs.shuffle(seed=seed, buffer_size=shuffle_buffer)
    return split_dataset_by_node(docs, rank=rank, world_size=world_size) if world_size > 1 else docs


class StreamingBlocks(IterableDataset):
    """Lazily tokenized (and packed) documents of a stream made by :func:`stream_documents`.

    In dataloader workers, ``datasets`` gives each worker its own shards (files) of this rank's stream, so no
    document is read twice; a worker without a shard (more workers than files on the rank) stays idle, so give
    at least ``world_size * num_workers`` files to use every worker. Ranks may yield a different number of blocks:
    train with ``max_steps`` so no rank waits for another.

    Args:
        documents: an HF ``IterableDataset`` of documents (from :func:`stream_documents`).
        text_field: the column that holds the text.
        tokenizer: a fast tokenizer.
        block_size: tokens per block.
        packing: pack documents into full blocks, or yield each document truncated to ``block_size``.
        shuffled: the documents are shuffled, so :meth:`set_epoch` gives each epoch its own order; False keeps
            every epoch in the stream's order (``datasets`` reorders the shards of any epoch but 0).
        word_boundaries: where whole-word masking's words come from (see :func:`tokenize_texts`).
    """

    def __init__(self, documents: Any, text_field: str, tokenizer: Any, block_size: int, packing: bool,
                 shuffled: bool = True, word_boundaries: WordBoundaries = "tokenizer") -> None:
        self.documents, self.text_field, self.tokenizer = documents, text_field, tokenizer
        self.block_size, self.packing, self.shuffled = block_size, packing, shuffled
        self.word_boundaries = word_boundaries

    def set_epoch(self, epoch: int) -> None:
        """Order the next pass as epoch ``epoch`` (reaches persistent workers: ``datasets`` shares the epoch)."""
        if self.shuffled:
            self.documents.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        packer = BlockPacker(self.block_size)
        for number, row in enumerate(self.documents):
            cols = tokenize_texts([row[self.text_field]], self.tokenizer, None if self.packing else self.block_size,
                                  True, self.word_boundaries, where=f"streamed document {number} of this pass")
            example = {name: values[0] for name, values in cols.items()}
            if not example["input_ids"]:
                continue
            if self.packing:
                yield from packer.add(example)
            else:
                yield example


class TextCorpusDataModule(pl.LightningDataModule):
    """A text corpus for masked- or causal-LM pre-training.

    Args:
        data_files: a file, a list of files or a glob (``.txt`` one document per line, ``.json``/``.jsonl``,
            ``.csv``, ``.parquet``); or None with ``dataset_name``.
        dataset_name: an HF dataset name or local dataset script dir (``datasets.load_dataset``).
        dataset_config: the dataset's config name, if it has several.
        split: the split to read from ``dataset_name``.
        text_field: the column that holds the text.
        tokenizer: a tokenizer directory or hub id; None with ``train_tokenizer``.
        train_tokenizer: train a ``"wordpiece"`` or ``"bpe"`` tokenizer on the training texts (from scratch).
        vocab_size: size of the trained tokenizer's vocabulary.
        tokenizer_dir: where the trained tokenizer is saved; default ``<trainer.default_root_dir>/tokenizer``.
        block_size: tokens per training example.
        packing: concatenate documents with separators into full blocks (no padding), or truncate each
            document to ``block_size`` and pad batches.
        nsp: build sentence pairs for next-sentence prediction (50% real next segment); needs [CLS]/[SEP].
        nsp_negatives: what a negative pair is, with ``nsp``: ``"random"`` (BERT's next-sentence prediction: B
            is a random segment of another document half the time) or ``"swapped"`` (ALBERT's sentence-order
            prediction: A and B are consecutive segments of one document, swapped half the time; label 1 =
            swapped). See :func:`lit_llm.text.sentence_order.make_sop_pairs`.
        word_boundaries: where the words of whole-word masking come from (``word_starts``): ``"tokenizer"``
            (its own words: right for English), ``"jieba"`` (segment raw Chinese text with jieba),
            ``"tagged"`` (pre-segmented ``word/tag`` text such as People's Daily; the model reads the words
            joined, tags dropped) or ``"whitespace"`` (pre-segmented words separated by spaces, read joined).
            Segmentation runs once, in the cached tokenization. See :mod:`lit_llm.text.segmentation`.
        tokenizer_nfkc: with ``train_tokenizer="wordpiece"``, NFKC-normalize first (full-width ``ＷＴＯ１２``
            and ``，`` share tokens with their ASCII forms); for Chinese corpora.
        val_fraction: every ``round(1 / val_fraction)``-th document goes to validation (0 for none).
        batch_size: examples per batch (per device).
        num_workers: dataloader worker processes.
        num_proc: processes for ``datasets.map`` tokenization (None: in-process).
        streaming: read the corpus lazily instead of tokenizing it all up front (for corpora larger than memory).
            Each rank reads its own files when their number is a multiple of the number of ranks (else every rank
            reads the stream and keeps one document in ``world_size``), dataloader workers split the rank's files,
            documents are shuffled through a buffer of ``shuffle_buffer`` with a new order each epoch (the same for
            the same ``seed``), and a resumed run continues the interrupted epoch at the batch where it stopped
            (the stream is replayed up to there; see :class:`~lit_llm.datamodules.resumable.ResumableStreamLoader`).
            Validation takes 1 in ``round(1 / val_fraction)`` documents by a hash of their text.
        shuffle_buffer: documents held in the streaming shuffle buffer (0: read in the files' order every epoch).
        cache_dir: the ``datasets`` cache (None: the HF default).
        seed: shuffling and NSP pairing seed.

    Raises:
        ValueError / FileNotFoundError / KeyError: bad arguments or data, with what to change.

    Example::
        dm = TextCorpusDataModule(data_files="data/wiki/*.jsonl", tokenizer="data/models/all-MiniLM-L6-v2",
                                  block_size=128)
    """

    def __init__(
        self,
        data_files: str | list[str] | None = None,
        dataset_name: str | None = None,
        dataset_config: str | None = None,
        split: str = "train",
        text_field: str = "text",
        tokenizer: str | None = None,
        train_tokenizer: TokenizerKind | None = None,
        vocab_size: int = 8000,
        tokenizer_dir: str | None = None,
        block_size: int = 128,
        packing: bool = True,
        nsp: bool = False,
        nsp_negatives: NspNegatives = "random",
        word_boundaries: WordBoundaries = "tokenizer",
        tokenizer_nfkc: bool = False,
        val_fraction: float = 0.05,
        batch_size: int = 16,
        num_workers: int = 0,
        num_proc: int | None = None,
        streaming: bool = False,
        shuffle_buffer: int = 10_000,
        cache_dir: str | None = None,
        seed: int = 42,
    ) -> None:
        super().__init__()
        if (data_files is None) == (dataset_name is None):
            raise ValueError(
                f"TextCorpusDataModule(data_files={data_files!r}, dataset_name={dataset_name!r}): give exactly one."
            )
        if (tokenizer is None) == (train_tokenizer is None):
            raise ValueError(
                f"TextCorpusDataModule(tokenizer={tokenizer!r}, train_tokenizer={train_tokenizer!r}): give a "
                "tokenizer path / hub id, or train_tokenizer='wordpiece' or 'bpe' to train one on the corpus."
            )
        if block_size < 8:
            raise ValueError(f"block_size={block_size!r}: use at least 8 tokens (128 or 512 are usual).")
        if not 0.0 <= val_fraction < 0.5:
            raise ValueError(f"val_fraction={val_fraction!r} must be in [0, 0.5), e.g. 0.05.")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be >= 1.")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer={shuffle_buffer!r} must be >= 0 (0 turns the streaming shuffle off).")
        if nsp and streaming:
            raise ValueError("nsp=True needs the whole corpus to draw random segments from; use streaming=False.")
        check_nsp_negatives(nsp, nsp_negatives)
        if word_boundaries not in WORD_BOUNDARIES:
            raise InvalidArgumentError(
                f"word_boundaries={word_boundaries!r}: choose one of {list(WORD_BOUNDARIES)} ('tokenizer' for "
                "English, 'jieba' for raw Chinese text, 'tagged' for word/tag files, 'whitespace' for "
                "space-separated words)."
            )
        if tokenizer_nfkc and train_tokenizer != "wordpiece":
            raise InvalidArgumentError(
                f"tokenizer_nfkc=True with train_tokenizer={train_tokenizer!r}: NFKC applies to a WordPiece tokenizer "
                "trained here (train_tokenizer='wordpiece'); a given tokenizer keeps its own normalizer."
            )
        # logger=False: Lightning refuses to log when module and datamodule hparams share a key with different
        # values (tokenizer=None vs a path); the CLI logs the whole config instead.
        self.save_hyperparameters(logger=False)
        self.data_files, self.dataset_name = data_files, dataset_name
        self.dataset_config, self.split = dataset_config, split
        self.text_field, self.tokenizer_name, self.train_tokenizer = text_field, tokenizer, train_tokenizer
        self.vocab_size, self.tokenizer_dir = vocab_size, tokenizer_dir
        self.block_size, self.packing, self.nsp, self.val_fraction = block_size, packing, nsp, val_fraction
        self.nsp_negatives, self.word_boundaries, self.tokenizer_nfkc = nsp_negatives, word_boundaries, tokenizer_nfkc
        self._tagged_checked = False
        self.batch_size, self.num_workers, self.num_proc = batch_size, num_workers, num_proc
        self.streaming, self.shuffle_buffer, self.cache_dir, self.seed = streaming, shuffle_buffer, cache_dir, seed
        self.tokenizer: Any = None
        self.train_dataset: Any = None
        self.val_dataset: Any = None

    # -- reading ---------------------------------------------------------------------------------------------
    def _describe(self) -> str:
        if self.data_files is not None:
            return f"data_files={self.data_files!r}"
        return f"dataset_name={self.dataset_name!r}"

    def _load_raw(self, streaming: bool) -> Any:
        import datasets

        if self.data_files is not None:
            builder, files = _resolve_files(self.data_files)
            if all(Path(f).stat().st_size == 0 for f in files):
                raise ValueError(f"the corpus {self._describe()} is empty: it holds no document.")
            raw = datasets.load_dataset(builder, data_files=files, split="train", streaming=streaming,
                                        cache_dir=self.cache_dir)
        else:
            raw = datasets.load_dataset(self.dataset_name, self.dataset_config, split=self.split,
                                        streaming=streaming, cache_dir=self.cache_dir)
        columns = raw.column_names if raw.column_names is not None else list(next(iter(raw), {}).keys())
        if not columns and not streaming:
            raise ValueError(f"the corpus {self._describe()} is empty: it holds no document.")
        if columns and self.text_field not in columns:
            raise KeyError(
                f"text_field={self.text_field!r} is not a field of {self._describe()}; its fields are {columns}. "
                "Set text_field to one of them."
            )
        if not streaming and len(raw) == 0:
            raise ValueError(f"the corpus {self._describe()} is empty: it holds no document.")
        return raw.select_columns([self.text_field])

    def _is_val(self, index: int) -> bool:
        every = round(1 / self.val_fraction) if self.val_fraction > 0 else 0
        return every > 0 and index % every == 0

    def _resolved_tokenizer_dir(self) -> Path:
        if self.tokenizer_dir is not None:
            return Path(self.tokenizer_dir)
        root = Path(self.trainer.default_root_dir) if self.trainer is not None else Path.cwd()
        return root / "tokenizer"

    def _texts(self, raw: Any) -> Iterator[str]:
        """The training texts, by the same split rule as the training data (index in memory, hash when streaming)."""
        every = round(1 / self.val_fraction) if self.val_fraction > 0 else 0
        joined = self.word_boundaries in ("tagged", "whitespace")  # the model reads the words joined
        for index, row in enumerate(raw):
            text = row[self.text_field]
            is_val = is_val_document(text, every) if self.streaming and text else self._is_val(index)
            if not is_val and text:
                yield segment(text, self.word_boundaries)[0] if joined else text

    def _check_tagged(self, raw: Any) -> None:
        """Parse every ``word/tag`` line before tokenizing, so a malformed pair is reported with its file and line."""
        if self.word_boundaries != "tagged" or self._tagged_checked:
            return
        files = _resolve_files(self.data_files)[1] if self.data_files is not None else []
        if files and all(Path(f).suffix.lower() in (".txt", ".text") for f in files):
            for path in files:
                with open(path, encoding="utf-8") as f:
                    for number, line in enumerate(f, start=1):
                        parse_tagged(line, f"{path}: line {number}")
        else:
            for index, text in enumerate(raw[self.text_field]):
                parse_tagged(text or "", f"{self._describe()}: document {index} (0-based)")
        self._tagged_checked = True

    def _warn_if_chinese_without_segmenter(self, raw: Any) -> None:
        if self.word_boundaries != "tokenizer":
            return
        sample = [t for t in raw.select(range(min(200, len(raw))))[self.text_field] if isinstance(t, str)]
        if _cjk_share(sample) > 0.3:
            rank_zero_warn(
                f"the corpus {self._describe()} is mostly Chinese and word_boundaries='tokenizer': its words are "
                "single characters, so whole-word masking masks characters. Set word_boundaries='jieba' (raw "
                "text), 'tagged' or 'whitespace' (pre-segmented text) to mask whole words."
            )

    # -- Lightning hooks -------------------------------------------------------------------------------------
    @override
    def prepare_data(self) -> None:
        # Rank zero only: train / save the tokenizer and fill the datasets cache, so other ranks' setup reads them.
        self._prepare_tokenizer(train=True)
        if not self.streaming:
            self._tokenized(self._load_raw(streaming=False))

    def _prepare_tokenizer(self, train: bool) -> None:
        if self.tokenizer is not None:
            return
        if self.tokenizer_name is not None:
            self.tokenizer = load_tokenizer(self.tokenizer_name)
        else:
            out = self._resolved_tokenizer_dir()
            if (out / "tokenizer.json").exists():
                self.tokenizer = load_tokenizer(str(out))
            elif train and self.train_tokenizer is not None:
                raw = self._load_raw(streaming=self.streaming)
                rank_zero_info(f"Training a {self.train_tokenizer} tokenizer (vocab {self.vocab_size}) into {out}")
                train_tokenizer(self._texts(raw), self.train_tokenizer, self.vocab_size, out,
                                model_max_length=max(512, self.block_size), nfkc=self.tokenizer_nfkc)
                # Read back as every later run will, so this run's tokenization cache has their fingerprint.
                self.tokenizer = load_tokenizer(str(out))
            else:
                raise FileNotFoundError(f"no trained tokenizer in {str(out)!r}; call prepare_data() first.")
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError(f"tokenizer {self.tokenizer_name!r} is not a fast tokenizer; word ids need one.")
        max_len = self.tokenizer.model_max_length
        if max_len < _HUGE and self.block_size > max_len:
            raise ValueError(
                f"block_size={self.block_size} is larger than the tokenizer's model_max_length={max_len} "
                f"({self.tokenizer_name or 'trained tokenizer'}); lower block_size to at most {max_len}."
            )

    def _tokenized(self, raw: Any) -> dict[str, Any]:
        """Tokenize, split and pack; cached by ``datasets`` fingerprints."""
        tok = self.tokenizer
        self._check_tagged(raw)
        # A module-level function plus fn_kwargs (not a closure over self) keeps the datasets fingerprint
        # stable across runs, which is what lets the second run re-use the cache files.
        tokenized = raw.map(
            _tokenize_column, batched=True, num_proc=self.num_proc, remove_columns=[self.text_field],
            fn_kwargs={"field": self.text_field, "tokenizer": tok,
                       "max_length": None if (self.packing or self.nsp) else self.block_size,
                       "add_special_tokens": not self.nsp, "word_boundaries": self.word_boundaries},
            desc="Tokenizing" if self.word_boundaries == "tokenizer" else f"Segmenting ({self.word_boundaries})"
                 " and tokenizing",
        )
        splits = {"train": [i for i in range(len(tokenized)) if not self._is_val(i)],
                  "val": [i for i in range(len(tokenized)) if self._is_val(i)]}
        out: dict[str, Any] = {}
        for name, indices in splits.items():
            if not indices:
                continue
            part = tokenized.select(indices).filter(lambda ids: len(ids) > 0, input_columns="input_ids",
                                                    num_proc=self.num_proc, desc=f"Dropping empty ({name})")
            if self.nsp:
                pairs = make_sop_pairs if self.nsp_negatives == "swapped" else make_nsp_pairs
                part = part.map(pairs, batched=True, num_proc=self.num_proc,
                                fn_kwargs={"tokenizer": tok, "block_size": self.block_size, "seed": self.seed},
                                remove_columns=part.column_names, desc=f"Sentence pairs ({name})")
            elif self.packing:
                part = part.map(pack_blocks, batched=True, num_proc=self.num_proc,
                                fn_kwargs={"block_size": self.block_size}, desc=f"Packing ({name})")
            out[name] = part
        return out

    @override
    def setup(self, stage: str) -> None:
        if self.train_dataset is not None:
            return
        self._prepare_tokenizer(train=self.trainer is None)
        if self.streaming:
            self._setup_streaming()
            return
        raw = self._load_raw(streaming=False)
        self._warn_if_chinese_without_segmenter(raw)
        parts = self._tokenized(raw)
        train = parts.get("train")
        n_docs = 0 if train is None else len(train)
        if train is None or n_docs == 0:
            raise ValueError(
                f"the corpus {self._describe()} (text_field={self.text_field!r}) gives no training block of "
                f"block_size={self.block_size} tokens: it is empty or shorter than one block. Lower block_size, "
                "use packing=False, or add text."
            )
        val = parts.get("val")
        self.train_dataset, self.val_dataset = train, val
        rank_zero_info(
            f"TextCorpusDataModule: {n_docs} training examples of <= {self.block_size} tokens"
            + (f", {len(val)} validation" if val is not None else "")
        )

    def _setup_streaming(self) -> None:
        raw = self._load_raw(streaming=True)
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        every = round(1 / self.val_fraction) if self.val_fraction > 0 else 0
        common: dict[str, Any] = dict(rank=rank, world_size=world, seed=self.seed, val_every=every)
        train = stream_documents(raw, self.text_field, shuffle_buffer=self.shuffle_buffer, **common)
        self.train_dataset = StreamingBlocks(train, self.text_field, self.tokenizer, self.block_size, self.packing,
                                             shuffled=self.shuffle_buffer > 0, word_boundaries=self.word_boundaries)
        if every:
            val = stream_documents(raw, self.text_field, val=True, **common)
            self.val_dataset = StreamingBlocks(val, self.text_field, self.tokenizer, self.block_size, self.packing,
                                               shuffled=False, word_boundaries=self.word_boundaries)

    def _loader(self, dataset: Any, shuffle: bool) -> DataLoader:
        collate = partial(collate_blocks, pad_token_id=self.tokenizer.pad_token_id or 0)
        kwargs: dict[str, Any] = dict(batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=collate,
                                      persistent_workers=self.num_workers > 0)
        if shuffle and isinstance(dataset, StreamingBlocks):  # a stream: its own epoch order, resumed by replay
            return ResumableStreamLoader(dataset, trainer=self.trainer, **kwargs)
        if shuffle:  # the training loader resumes mid-epoch exactly
            return ResumableDataLoader(dataset, shuffle=True, seed=self.seed, **kwargs)
        return DataLoader(dataset, generator=torch.Generator().manual_seed(self.seed), **kwargs)

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, shuffle=True)

    @override
    def val_dataloader(self) -> DataLoader | list:
        return [] if self.val_dataset is None else self._loader(self.val_dataset, shuffle=False)

    @override
    def state_dict(self) -> dict[str, Any]:
        # The trained tokenizer's location, so a resumed run does not retrain a different one.
        return {"tokenizer_dir": str(self._resolved_tokenizer_dir()) if self.train_tokenizer else None}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("tokenizer_dir"):
            self.tokenizer_dir = state_dict["tokenizer_dir"]


def _tokenize_column(batch: dict[str, list[Any]], field: str, tokenizer: Any, max_length: int | None,
                     add_special_tokens: bool, word_boundaries: WordBoundaries = "tokenizer"
                     ) -> dict[str, list[list[int]]]:
    return tokenize_texts(batch[field], tokenizer, max_length, add_special_tokens, word_boundaries)
