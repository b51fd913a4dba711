"""Sentence pairs for ALBERT's sentence-order prediction (SOP), the twin of BERT's next-sentence pairs.

BERT's next-sentence prediction pairs a segment with its real successor or with a random segment of another
document; a model can solve much of it from the topic alone. ALBERT (Lan et al., 2020,
https://arxiv.org/abs/1909.11942, section 3.1) keeps both segments from the same document, consecutive, and
swaps their order half the time, so only coherence tells them apart. The rows have the same shape and
columns as :func:`lit_llm.datamodules.packing.make_nsp_pairs` (``[CLS] A [SEP] B [SEP]``), so the same
two-way head and loss train on them (``MaskedLanguageModel(nsp=True, nsp_negatives="swapped")``).
"""

from __future__ import annotations

import random
from typing import Any

__all__ = ["make_sop_pairs", "check_nsp_negatives", "NSP_NEGATIVES", "ORIGINAL_ORDER", "SWAPPED"]

ORIGINAL_ORDER = 0  # label of a pair in document order (HF's AlbertForPreTraining: sentence_order_label 0)
SWAPPED = 1  # label of a swapped pair

_FIELDS = ("input_ids", "special_tokens_mask", "word_starts")
NSP_NEGATIVES: tuple[str, ...] = ("random", "swapped")  # BERT's random segment, ALBERT's swapped order


def check_nsp_negatives(nsp: bool, nsp_negatives: str) -> None:
    """The one check of the sentence-pair options, shared by the corpus datamodule and MaskedLanguageModel.

    Raises:
        InvalidArgumentError: an unknown ``nsp_negatives``, or one other than ``random`` without ``nsp``.
    """
    from lit_llm.errors import InvalidArgumentError

    if nsp_negatives not in NSP_NEGATIVES:
        raise InvalidArgumentError(
            f"nsp_negatives={nsp_negatives!r}: choose 'random' (BERT next-sentence prediction) or 'swapped' "
            "(ALBERT sentence-order prediction)."
        )
    if nsp_negatives != "random" and not nsp:
        raise InvalidArgumentError(
            f"nsp_negatives={nsp_negatives!r} is an option of the sentence-pair objective: set nsp=True too."
        )


def make_sop_pairs(columns: dict[str, list[list[int]]], tokenizer: Any, block_size: int, seed: int
                   ) -> dict[str, list[Any]]:
    """Sentence-order pairs from documents tokenized *without* special tokens (a ``datasets.map`` batch).

    Each document is cut into segments of ``(block_size - 3) // 2`` tokens; every segment with a successor in
    the same document makes one pair with it, in document order (label 0) or swapped (label 1), each with
    probability 1/2 from a generator seeded by ``seed`` and the batch's content (the same rows for the same
    data and seed). A document shorter than two segments is cut in two halves instead (one pair, when it has at
    least two tokens). Rows are ``[CLS] A [SEP] B [SEP]`` with ``token_type_ids`` 0 on A and 1 on B, and the
    label in ``next_sentence_label``.

    Args:
        columns: ``input_ids``, ``special_tokens_mask``, ``word_starts`` per document, without specials.
        tokenizer: gives ``cls_token_id`` and ``sep_token_id``.
        block_size: the longest row.
        seed: the swap seed.

    Raises:
        ValueError: a tokenizer without ``[CLS]`` / ``[SEP]``.

    Example::
        dataset.map(make_sop_pairs, batched=True, fn_kwargs={"tokenizer": tok, "block_size": 128, "seed": 0})
    """
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls is None or sep is None:
        raise ValueError(
            f"sentence-order prediction needs a tokenizer with [CLS] and [SEP]; {type(tokenizer).__name__} has "
            f"cls_token={tokenizer.cls_token!r}, sep_token={tokenizer.sep_token!r}. Use nsp=False."
        )
    rng = random.Random(f"sop-{seed}-{len(columns['input_ids'])}-{sum(map(len, columns['input_ids']))}")
    seg_len = max(1, (block_size - 3) // 2)
    out: dict[str, list[Any]] = {name: [] for name in (*_FIELDS, "token_type_ids", "next_sentence_label")}
    for ids, starts in zip(columns["input_ids"], columns["word_starts"]):
        if len(ids) > seg_len:
            cuts = list(range(0, len(ids), seg_len))
            segments = [(ids[c : c + seg_len], starts[c : c + seg_len]) for c in cuts]
        elif len(ids) >= 2:
            half = len(ids) // 2
            segments = [(ids[:half], starts[:half]), (ids[half:], starts[half:])]
        else:
            continue
        for (a_ids, a_starts), (b_ids, b_starts) in zip(segments, segments[1:]):
            label = SWAPPED if rng.random() < 0.5 else ORIGINAL_ORDER
            if label == SWAPPED:
                (a_ids, a_starts), (b_ids, b_starts) = (b_ids, b_starts), (a_ids, a_starts)
            out["input_ids"].append([cls, *a_ids, sep, *b_ids, sep])
            out["special_tokens_mask"].append([1] + [0] * len(a_ids) + [1] + [0] * len(b_ids) + [1])
            # A segment cut mid-word: its leading pieces form a word of their own (as a packed block's do).
            out["word_starts"].append([0, 1, *a_starts[1:], 0, 1, *b_starts[1:], 0])
            out["token_type_ids"].append([0] * (len(a_ids) + 2) + [1] * (len(b_ids) + 1))
            out["next_sentence_label"].append(label)
    return out
