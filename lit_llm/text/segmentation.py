"""Word boundaries for whole-word masking of text written without spaces (Chinese), aligned to tokens.

A Chinese BERT tokenizer cuts text into single characters, so the tokenizer's own ``word_ids()`` make every
character a "word" and whole-word masking silently becomes character masking. BERT-wwm (Cui et al., 2019,
https://arxiv.org/abs/1906.08101) takes word boundaries from a segmenter instead and masks all the characters
of a word together. Here the words come from one of:

- ``"jieba"``: the jieba segmenter on raw text. It reads the text NFKC-normalized (full-width ``ＷＴＯ１２`` as
  ``WTO12``, so a full-width Latin word stays one word as its ASCII form does); the spans map back to the
  original characters.
- ``"tagged"``: pre-segmented, part-of-speech tagged text, one ``word/tag`` pair per whitespace-separated item
  (People's Daily: ``迈向/v 充满/v 希望/n``). Tags are dropped.
- ``"whitespace"``: pre-segmented text with words separated by whitespace (the output of any segmenter).

For ``tagged`` and ``whitespace`` the text the model reads is the words joined back without the separators
(:func:`join_words`), with one space kept only between two Latin letters or digits (``Windows 98``).

Each word is a character span; :func:`word_starts_from_offsets` flags the token whose first character starts
a new word, from the fast tokenizer's ``offset_mapping``. These flags are the ``word_starts`` that
:func:`lit_llm.text.masking.mask_tokens` already uses, so the masking code is the same for English and Chinese.

Plain functions on strings and lists: ``TextCorpusDataModule(word_boundaries=...)`` runs them once, inside its
cached ``datasets.map`` tokenization, never per batch.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Sequence
from typing import Any, Literal, get_args

from lit_llm.errors import UserInputError

__all__ = [
    "MAX_WORD_TOKENS",
    "SegmentationError",
    "WordBoundaries",
    "join_words",
    "jieba_spans",
    "parse_tagged",
    "segment",
    "word_starts_for_texts",
    "word_starts_from_offsets",
]

WordBoundaries = Literal["tokenizer", "jieba", "tagged", "whitespace"]
WORD_BOUNDARIES: tuple[str, ...] = get_args(WordBoundaries)

# A "word" longer than this many tokens is masked token by token. Segmenters give up on some runs (a URL, a long
# string of symbols, a line fed to "whitespace" mode without spaces) and return them as one word; masking 30
# tokens at once would hide the whole context the model must predict them from. Chinese words are 1-4
# characters (People's Daily 1998: 99.98% have at most 8).
MAX_WORD_TOKENS = 8

Span = tuple[int, int]  # [start, end) character offsets of a word in the text the model reads

_TAG = re.compile(r"[A-Za-z]+")
_LATIN_OR_DIGIT = re.compile(r"[0-9A-Za-z\u00c0-\u024f]")


class SegmentationError(ValueError, UserInputError):
    """Text that cannot be cut into words as asked (a malformed ``word/tag`` pair, a segmenter's bad output)."""


def parse_tagged(line: str, where: str = "") -> list[tuple[str, str]]:
    """The ``(word, tag)`` pairs of one line of tagged text (``迈向/v  充满/v``; empty list for a blank line).

    The tag is what follows the last ``/`` and must be letters (``n``, ``nr``, ``Vg``), so a word may itself hold
    a ``/`` (``１/２/m``).

    Args:
        line: one line of the tagged file.
        where: the file and line, quoted in the error (e.g. ``"data/zh/train.tagged.txt: line 12"``).

    Raises:
        SegmentationError: an item that is not ``word/tag``, naming ``where``, the item and its position.

    Example::
        >>> parse_tagged("迈向/v  充满/v 希望/n")
        [('迈向', 'v'), ('充满', 'v'), ('希望', 'n')]
    """
    pairs = []
    for position, item in enumerate(line.split(), start=1):
        word, slash, tag = item.rpartition("/")
        if not slash or not word or not _TAG.fullmatch(tag):
            raise SegmentationError(
                f"{where + ': ' if where else ''}item {position} {item!r} is not a 'word/tag' pair (expected e.g. "
                "'迈向/v': a word, a slash, then a part-of-speech tag of letters, items separated by spaces). "
                "Fix the line, or read the file with word_boundaries='whitespace' (words only) or 'jieba' (raw text)."
            )
        pairs.append((word, tag))
    return pairs


def join_words(words: Sequence[str]) -> tuple[str, list[Span]]:
    """Join pre-segmented words into the text a model reads, and return each word's span in it.

    Words are concatenated as written Chinese is; a single space is kept between two words only where the first
    ends and the second starts with a Latin letter or a digit (``Windows`` + ``98``), so Latin words stay apart.

    Example::
        >>> join_words(["我", "用", "Windows", "98"])
        ('我用Windows 98', [(0, 1), (1, 2), (2, 9), (10, 12)])
    """
    parts: list[str] = []
    spans: list[Span] = []
    cursor = 0
    for word in words:
        if not word:
            continue
        if parts and _LATIN_OR_DIGIT.match(parts[-1][-1]) and _LATIN_OR_DIGIT.match(word[0]):
            parts.append(" ")
            cursor += 1
        parts.append(word)
        spans.append((cursor, cursor + len(word)))
        cursor += len(word)
    return "".join(parts), spans


def _nfkc_with_source(text: str) -> tuple[str, list[int]]:
    """NFKC-normalize character by character; ``source[j]`` is the original index of normalized character j."""
    out: list[str] = []
    source: list[int] = []
    for i, char in enumerate(text):
        normalized = unicodedata.normalize("NFKC", char)
        out.append(normalized)
        source.extend([i] * len(normalized))
    return "".join(out), source


def jieba_spans(text: str, where: str = "") -> list[Span]:
    """Word spans of raw ``text`` from jieba (on its NFKC form; spans index the original text).

    Whitespace-only pieces are not words. Needs ``jieba`` (``pip install jieba``).

    Raises:
        SegmentationError: jieba's words do not add up to the text (never seen; a changed jieba would do it).

    Example::
        >>> jieba_spans("北京大学的学生")
        [(0, 4), (4, 5), (5, 7)]
    """
    try:
        import jieba
    except ImportError as err:  # an optional dependency
        raise ImportError("word_boundaries='jieba' needs the jieba segmenter: pip install jieba") from err
    jieba.setLogLevel(logging.WARNING)  # else it prints "Building prefix dict ..." in every process
    normalized, source = _nfkc_with_source(text)
    words = jieba.lcut(normalized)
    if "".join(words) != normalized:
        raise SegmentationError(
            f"{where + ': ' if where else ''}jieba's words {words[:8]!r}... do not add up to the text "
            f"{text[:40]!r}; check the installed jieba version, or pre-segment the text and use "
            "word_boundaries='whitespace'."
        )
    spans = []
    cursor = 0
    for word in words:
        start, cursor = cursor, cursor + len(word)
        if word.strip():
            spans.append((source[start], source[cursor - 1] + 1))
    return spans


def segment(text: str, mode: WordBoundaries, where: str = "") -> tuple[str, list[Span]]:
    """The text a model reads and its word spans, for one line of a corpus read with ``mode``.

    Args:
        text: the line as stored (raw text for ``"jieba"``, ``word/tag`` pairs for ``"tagged"``, space-separated
            words for ``"whitespace"``).
        mode: one of ``"jieba"``, ``"tagged"``, ``"whitespace"`` (``"tokenizer"`` needs no segmentation).
        where: the file and line, quoted in errors.

    Raises:
        SegmentationError: a malformed ``word/tag`` item (``"tagged"``).
        ValueError: an unknown mode.

    Example::
        >>> segment("北京/ns 大学/n 的/u 学生/n", "tagged")
        ('北京大学的学生', [(0, 2), (2, 4), (4, 5), (5, 7)])
    """
    if mode == "jieba":
        return text, jieba_spans(text, where)
    if mode == "tagged":
        return join_words([word for word, _ in parse_tagged(text, where)])
    if mode == "whitespace":
        return join_words(text.split())
    raise ValueError(f"segment(mode={mode!r}): choose one of 'jieba', 'tagged', 'whitespace'.")


def word_starts_from_offsets(
    offsets: Sequence[tuple[int, int]],
    special_tokens_mask: Sequence[int],
    spans: Sequence[Span],
    text: str,
    max_word_tokens: int = MAX_WORD_TOKENS,
) -> list[int]:
    """``word_starts`` flags of one tokenized text: 1 on the first token of each segmented word, 0 elsewhere.

    A token belongs to the word that holds its first non-space character (a byte-level BPE token carries its
    leading space). A token never splits, so when a word boundary falls inside a token, the token stays with
    the word it starts in and the rest of that word starts afresh at the next token. Characters in no span
    (spaces) and tokens in no word get a word of their own. A word of more than ``max_word_tokens`` tokens is
    flagged token by token (see :data:`MAX_WORD_TOKENS`). Special tokens get 0, as
    :func:`lit_llm.text.masking.word_start_flags` gives them.

    Args:
        offsets: the fast tokenizer's ``offset_mapping`` of the text, one ``(start, end)`` per token.
        special_tokens_mask: 1 on special tokens.
        spans: the words' ``[start, end)`` character spans in ``text``.
        text: the text that was tokenized.
        max_word_tokens: longest word masked as a whole.

    Example::
        # 北京大学的学生 -> [CLS] 北 京 大 学 的 学 生 [SEP], words 北京大学 / 的 / 学生
        word_starts_from_offsets(enc["offset_mapping"], enc["special_tokens_mask"], [(0, 4), (4, 5), (5, 7)],
                                 "北京大学的学生")  # [0, 1, 0, 0, 0, 1, 1, 0, 0]
    """
    char_word = [-1] * (len(text) + 1)  # word index of each character, -1 outside every word
    for index, (start, end) in enumerate(spans):
        char_word[start:end] = [index] * (end - start)
    token_word: list[int | None] = []  # None: special; -1 - k: a token in no word, a word of its own
    for k, ((start, end), special) in enumerate(zip(offsets, special_tokens_mask)):
        if special:
            token_word.append(None)
            continue
        first = start
        while first < end - 1 and text[first].isspace():
            first += 1
        index = char_word[first] if first < len(text) else -1
        token_word.append(index if index >= 0 else -1 - k)
    sizes: dict[int, int] = {}
    for word in token_word:
        if word is not None:
            sizes[word] = sizes.get(word, 0) + 1
    flags = []
    previous: int | None = None
    for word in token_word:
        flags.append(0 if word is None else int(word != previous or sizes[word] > max_word_tokens))
        previous = word
    return flags


def word_starts_for_texts(
    texts: Sequence[str],
    spans: Sequence[Sequence[Span]],
    tokenizer: Any,
    *,
    max_length: int | None,
    add_special_tokens: bool,
    max_word_tokens: int = MAX_WORD_TOKENS,
) -> list[list[int]]:
    """``word_starts`` of a batch of texts from their word spans, tokenized as ``tokenize_documents`` does.

    Args:
        texts: the texts the model reads (from :func:`segment`).
        spans: each text's word spans.
        tokenizer: a fast tokenizer (``offset_mapping`` needs one).
        max_length: truncation length (None: none), as in the tokenization the flags go with.
        add_special_tokens: as in that tokenization.
        max_word_tokens: longest word masked as a whole.

    Example::
        text, spans = segment("北京/ns 大学/n", "tagged")
        word_starts_for_texts([text], [spans], tokenizer, max_length=None, add_special_tokens=True)
    """
    enc = tokenizer(
        list(texts), add_special_tokens=add_special_tokens, truncation=max_length is not None, max_length=max_length,
        return_offsets_mapping=True, return_special_tokens_mask=True, return_attention_mask=False,
        return_token_type_ids=False, verbose=False,
    )
    return [
        word_starts_from_offsets(offsets, special, doc_spans, text, max_word_tokens)
        for offsets, special, doc_spans, text in zip(enc["offset_mapping"], enc["special_tokens_mask"], spans, texts)
    ]
