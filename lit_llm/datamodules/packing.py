"""Tokenize documents, pack them into fixed-size blocks, build sentence pairs, pad batches.

Pure functions on plain Python lists (what ``datasets.map(batched=True)`` hands over), so they run the same
in a cached ``map``, in a streaming iterator and in a test. Every example carries, per token:

- ``input_ids``
- ``special_tokens_mask``: 1 on special tokens (never masked, never a target of MLM)
- ``word_starts``: 1 on the first piece of a word (for whole-word masking, see ``lit_llm.text.masking``)
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from lit_llm.text.masking import word_start_flags

__all__ = ["FIELDS", "tokenize_documents", "pack_blocks", "BlockPacker", "make_nsp_pairs", "collate_blocks"]

FIELDS = ("input_ids", "special_tokens_mask", "word_starts")
Columns = dict[str, list[list[int]]]


def _separator_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    # BERT-style tokenizers already close each document with [SEP]; GPT-2-style ones add nothing, so we
    # append EOS between documents, as GPT-2 was trained.
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id


def tokenize_documents(
    texts: list[str],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int | None = None,
    add_special_tokens: bool = True,
) -> Columns:
    """Tokenize documents, with the tokenizer's special tokens and a separator at the end of each.

    Args:
        texts: one string per document (None and empty strings give empty examples).
        tokenizer: a *fast* tokenizer (word ids are needed for whole-word masking).
        max_length: truncate each document to this many tokens (None: no truncation, for packing).
        add_special_tokens: add ``[CLS] ... [SEP]`` (or the tokenizer's equivalent).

    Returns:
        columns ``input_ids``, ``special_tokens_mask``, ``word_starts``, one list per document.

    Example::
        columns = tokenize_documents(["a first doc", "a second"], tokenizer)
    """
    texts = [t if isinstance(t, str) else "" for t in texts]
    enc = tokenizer(
        texts,
        add_special_tokens=add_special_tokens,
        truncation=max_length is not None,
        max_length=max_length,
        return_special_tokens_mask=True,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,
    )
    sep = _separator_id(tokenizer) if add_special_tokens else None
    out: Columns = {name: [] for name in FIELDS}
    for i, ids in enumerate(enc["input_ids"]):
        special = enc["special_tokens_mask"][i]
        starts = word_start_flags(enc.word_ids(i))
        if sep is not None and ids and ids[-1] != sep and (max_length is None or len(ids) < max_length):
            ids, special, starts = ids + [sep], special + [1], starts + [0]
        if not texts[i].strip():
            ids, special, starts = [], [], []  # an empty line is no document, not a lone [CLS] [SEP]
        out["input_ids"].append(ids)
        out["special_tokens_mask"].append(special)
        out["word_starts"].append(starts)
    return out


def pack_blocks(columns: Columns, block_size: int) -> Columns:
    """Concatenate the documents of one ``map`` batch and cut them into blocks of exactly ``block_size``.

    No padding is ever added; the tail shorter than a block is dropped (at most ``block_size - 1`` tokens per
    ``map`` batch, i.e. per 1000 documents by default).

    Example::
        dataset.map(pack_blocks, batched=True, fn_kwargs={"block_size": 128})
    """
    out: Columns = {name: [] for name in FIELDS}
    flat = {name: [tok for doc in columns[name] for tok in doc] for name in FIELDS}
    n_blocks = len(flat["input_ids"]) // block_size
    for name in FIELDS:
        values = flat[name]
        out[name] = [values[b * block_size : (b + 1) * block_size] for b in range(n_blocks)]
    return out


class BlockPacker:
    """Streaming twin of :func:`pack_blocks`: feed documents one by one, get full blocks as they fill.

    Example::
        packer = BlockPacker(128)
        for doc in documents:
            yield from packer.add(doc)
    """

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self._buffer: dict[str, list[int]] = {name: [] for name in FIELDS}  # one flat token stream per field

    def add(self, example: dict[str, list[int]]) -> Iterator[dict[str, list[int]]]:
        for name in FIELDS:
            self._buffer[name].extend(example[name])
        while len(self._buffer["input_ids"]) >= self.block_size:
            yield {name: self._buffer[name][: self.block_size] for name in FIELDS}
            for name in FIELDS:
                del self._buffer[name][: self.block_size]


def make_nsp_pairs(
    columns: Columns,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    seed: int,
) -> dict[str, list[Any]]:
    """Sentence pairs for BERT's next-sentence prediction, from documents tokenized *without* specials.

    Each document is cut into segments of ``(block_size - 3) // 2`` tokens. Segment ``i`` is paired with the
    document's segment ``i + 1`` half of the time (label 0, "is next", as in ``BertForPreTraining``) and with a
    random segment of another document otherwise (label 1). Output rows are
    ``[CLS] A [SEP] B [SEP]`` with ``token_type_ids`` 0 on A and 1 on B.

    Example::
        dataset.map(make_nsp_pairs, batched=True, fn_kwargs={"tokenizer": tok, "block_size": 128, "seed": 0})
    """
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise ValueError(
            f"next-sentence prediction needs a tokenizer with [CLS] and [SEP]; {type(tokenizer).__name__} has "
            f"cls_token={tokenizer.cls_token!r}, sep_token={tokenizer.sep_token!r}. Use nsp=False."
        )
    rng = random.Random(f"{seed}-{len(columns['input_ids'])}-{sum(map(len, columns['input_ids']))}")
    seg_len = max(1, (block_size - 3) // 2)
    segments: list[tuple[int, list[int], list[int]]] = []  # (document, ids, word_starts)
    for doc, (ids, starts) in enumerate(zip(columns["input_ids"], columns["word_starts"])):
        for s in range(0, len(ids), seg_len):
            segments.append((doc, ids[s : s + seg_len], starts[s : s + seg_len]))
    out: dict[str, list[Any]] = {name: [] for name in (*FIELDS, "token_type_ids", "next_sentence_label")}
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    for i, (doc, a_ids, a_starts) in enumerate(segments):
        has_next = i + 1 < len(segments) and segments[i + 1][0] == doc
        others = [j for j in (rng.randrange(len(segments)) for _ in range(10)) if segments[j][0] != doc]
        if not has_next and not others:
            continue
        if has_next and (not others or rng.random() < 0.5):
            label, (_, b_ids, b_starts) = 0, segments[i + 1]
        else:
            label, (_, b_ids, b_starts) = 1, segments[others[0]]
        out["input_ids"].append([cls, *a_ids, sep, *b_ids, sep])
        out["special_tokens_mask"].append([1] + [0] * len(a_ids) + [1] + [0] * len(b_ids) + [1])
        out["word_starts"].append([0, *a_starts, 0, *b_starts, 0])
        out["token_type_ids"].append([0] * (len(a_ids) + 2) + [1] * (len(b_ids) + 1))
        out["next_sentence_label"].append(label)
    return out


def collate_blocks(examples: list[dict[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Stack examples into a batch, right-padding to the longest (packed blocks need no padding).

    Returns ``input_ids``, ``attention_mask`` (0 on padding), ``special_tokens_mask`` (1 on padding too, so
    padding is never masked), ``word_starts``, and ``token_type_ids`` / ``next_sentence_label`` when present.
    """
    length = max(len(e["input_ids"]) for e in examples)

    def pad(name: str, value: int) -> torch.Tensor:
        rows = [list(e[name]) + [value] * (length - len(e[name])) for e in examples]
        return torch.tensor(rows, dtype=torch.long)  # (B, T)

    batch = {
        "input_ids": pad("input_ids", pad_token_id),
        "special_tokens_mask": pad("special_tokens_mask", 1),
        "word_starts": pad("word_starts", 0),
    }
    batch["attention_mask"] = torch.tensor(
        [[1] * len(e["input_ids"]) + [0] * (length - len(e["input_ids"])) for e in examples], dtype=torch.long
    )
    if "token_type_ids" in examples[0]:
        batch["token_type_ids"] = pad("token_type_ids", 0)
    if "next_sentence_label" in examples[0]:
        batch["next_sentence_label"] = torch.tensor([e["next_sentence_label"] for e in examples], dtype=torch.long)
    return batch


def iter_shard(items: Iterable[Any], shard: int, num_shards: int) -> Iterator[tuple[int, Any]]:
    """``(index, item)`` for the items whose index ``% num_shards == shard``: round-robin, disjoint, complete."""
    for index, item in enumerate(items):
        if index % num_shards == shard:
            yield index, item
