"""Reading tagged sentences (CoNLL columns, JSON / JSONL token and tag lists) and checking their tags.

Every sentence remembers the file and line it came from, so each error on user data says where it is and what
to do. The tag checks use :mod:`lit_llm.text.entities`, the same code that scores the model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lit_llm.datamodules.files import DataFileError
from lit_llm.text.entities import TagScheme, extract_entities, first_invalid_tag, parse_tag, repair_tags

__all__ = ["TaggedSentence", "read_conll", "read_json", "read_tagged", "check_tags", "DOCSTART"]

DOCSTART = "-DOCSTART-"
_JSON_EXTENSIONS = (".json", ".jsonl")


@dataclass
class TaggedSentence:
    """One sentence: its tokens, their tags (None when unlabelled), and where it came from.

    ``lines[i]`` is the 1-based file line of token ``i`` (CoNLL), or the same record line for every token (JSON).
    """

    tokens: list[str]
    tags: list[str] | None
    source: str
    lines: list[int] = field(default_factory=list)

    def where(self, i: int = 0) -> str:
        if self.lines:
            return f"{self.source}: line {self.lines[min(i, len(self.lines) - 1)]}"
        return self.source


def read_conll(path: str | Path, labelled: bool = True) -> list[TaggedSentence]:
    """Read a CoNLL file: ``token<TAB or spaces>tag`` per line, blank lines between sentences.

    The token is the first column and the tag the last (CoNLL-2003's middle POS / chunk columns are skipped).
    ``-DOCSTART-`` lines are skipped, and a line that is only whitespace (WNUT writes a lone tab) ends a
    sentence. With ``labelled=False`` a line may be a bare token.

    Args:
        path: the file.
        labelled: whether every line must carry a tag.

    Raises:
        FileNotFoundError: no such file.
        DataFileError: a line without a tag (quoting the file, the line number and the line), or no sentences.

    Example::
        sentences = read_conll("data/wnut16/train.conll")
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CoNLL file {str(path)!r} does not exist (resolved from {Path.cwd()}).")
    sentences: list[TaggedSentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    lines: list[int] = []

    def flush() -> None:
        if tokens:
            sentences.append(TaggedSentence(list(tokens), list(tags) if labelled else None, str(path), list(lines)))
        tokens.clear()
        tags.clear()
        lines.clear()

    with path.open(encoding="utf-8") as f:
        for number, raw in enumerate(f, start=1):
            fields = raw.split()
            if not fields:
                flush()
                continue
            if fields[0] == DOCSTART:
                flush()
                continue
            if labelled and len(fields) < 2:
                raise DataFileError(
                    f"{path}: line {number}: expected 'token<TAB>tag', got {raw.rstrip(chr(10))!r}. "
                    "Each line needs a token and its tag separated by a tab or spaces; sentences are separated "
                    "by a blank line."
                )
            tokens.append(fields[0])
            tags.append(fields[-1])
            lines.append(number)
    flush()
    if not sentences:
        raise DataFileError(f"{path}: no sentences found; expected 'token<TAB>tag' lines separated by blank lines.")
    return sentences


def _records(path: Path) -> Iterable[tuple[int, Any]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataFileError(f"{path}: line {number}: not valid JSON ({err.msg}).") from None
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataFileError(f"{path}: line {err.lineno}: not valid JSON ({err.msg}).") from None
    if not isinstance(data, list):
        raise DataFileError(f"{path}: expected a JSON list of {{tokens, tags}} objects, got {type(data).__name__}.")
    yield from enumerate(data)


def read_json(
    path: str | Path, tokens_key: str = "tokens", tags_key: str = "tags", labelled: bool = True
) -> list[TaggedSentence]:
    """Read sentences from JSON (a list of objects) or JSONL (one object per line) with token and tag lists.

    Args:
        path: a ``.json`` or ``.jsonl`` file.
        tokens_key: the key of the token list.
        tags_key: the key of the tag list.
        labelled: whether every record must carry tags.

    Raises:
        FileNotFoundError: no such file.
        DataFileError: bad JSON, a missing key, a token list that is not a list of strings, or tags whose
            number differs from the tokens'.

    Example::
        sentences = read_json("train.jsonl")  # {"tokens": ["John", "lives"], "tags": ["B-PER", "O"]} per line
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSON file {str(path)!r} does not exist (resolved from {Path.cwd()}).")
    jsonl = path.suffix.lower() == ".jsonl"
    sentences = []
    for index, record in _records(path):
        where = f"{path}: line {index}" if jsonl else f"{path}: record {index}"
        if not isinstance(record, dict) or tokens_key not in record:
            raise DataFileError(f"{where}: no {tokens_key!r} key; each record needs a token list (tokens_column).")
        tokens = record[tokens_key]
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise DataFileError(f"{where}: {tokens_key!r} must be a list of strings, got {tokens!r}.")
        tags = record.get(tags_key)
        if labelled:
            if tags is None:
                raise DataFileError(f"{where}: no {tags_key!r} key; labelled splits need a tag list (tags_column).")
            if not isinstance(tags, list) or len(tags) != len(tokens):
                n_tags = len(tags) if isinstance(tags, list) else tags
                raise DataFileError(
                    f"{where}: {len(tokens)} tokens but {n_tags} tags; give exactly one tag per token."
                )
            tags = [str(t) for t in tags]
        if tokens:
            source, lines = (str(path), [index] * len(tokens)) if jsonl else (where, [])
            sentences.append(TaggedSentence(tokens, tags if labelled else None, source, lines))
    if not sentences:
        raise DataFileError(f"{path}: no sentences found.")
    return sentences


def read_tagged(
    path: str | Path, tokens_key: str = "tokens", tags_key: str = "tags", labelled: bool = True
) -> list[TaggedSentence]:
    """Read ``path`` as JSON / JSONL by its extension, else as CoNLL columns."""
    if Path(path).suffix.lower() in _JSON_EXTENSIONS:
        return read_json(path, tokens_key, tags_key, labelled)
    return read_conll(path, labelled)


def check_tags(
    sentences: Sequence[TaggedSentence],
    scheme: TagScheme,
    labels: Sequence[str] | None = None,
    repair: bool = False,
) -> int:
    """Check every tag against the scheme and the label set; repair broken sequences in place if asked.

    Args:
        sentences: labelled sentences (unlabelled ones are skipped).
        scheme: ``BIO`` or ``BIOES``.
        labels: the configured label set; None skips that check.
        repair: rewrite ill-formed sequences (``O I-X`` becomes ``O B-X``; in BIOES, ``B-X I-X O`` becomes
            ``B-X E-X O``) instead of raising.

    Returns:
        The number of sentences repaired.

    Raises:
        DataFileError: a malformed tag, a prefix outside the scheme, an ill-formed sequence (without ``repair``)
            or a tag missing from ``labels``; each names the file and line.
    """
    known = set(labels) if labels is not None else None
    repaired = 0
    for sent in sentences:
        if sent.tags is None:
            continue
        for i, tag in enumerate(sent.tags):
            try:
                prefix, _ = parse_tag(tag)
            except ValueError as err:
                raise DataFileError(f"{sent.where(i)}: {err}") from None
            if prefix not in ("B", "I", "O") and scheme == "BIO":
                raise DataFileError(
                    f"{sent.where(i)}: tag {tag!r} is a BIOES tag but tag_scheme='BIO'; set tag_scheme: BIOES."
                )
        bad = first_invalid_tag(sent.tags, scheme)
        if bad is not None:
            if not repair:
                prev = sent.tags[bad - 1] if bad else "(sentence start)"
                raise DataFileError(
                    f"{sent.where(bad)}: tag {sent.tags[bad]!r} after {prev!r} is not valid {scheme} "
                    f"({_why(sent.tags, bad, scheme)}). Fix the data or set repair_tags=True to rewrite such "
                    "sequences the way seqeval's default mode reads them."
                )
            sent.tags = repair_tags(sent.tags, scheme)
            repaired += 1
        if known is not None:
            for i, tag in enumerate(sent.tags):
                if tag not in known:
                    raise DataFileError(
                        f"{sent.where(i)}: tag {tag!r} is not in the configured labels ({', '.join(labels or [])}). "
                        "Add it to labels, or fix the tag."
                    )
    return repaired


def _why(tags: Sequence[str], i: int, scheme: TagScheme) -> str:
    prefix, type_ = parse_tag(tags[i])
    if prefix in ("I", "E"):
        return f"an {prefix}- tag needs a B-{type_} (or I-{type_}) right before it"
    if scheme == "BIOES" and prefix in ("B", "I"):
        return f"a BIOES entity must end with E-{type_}; single tokens use S-{type_}"
    if scheme == "BIOES" and prefix == "O":
        return "the entity before it has no E- tag"
    return "the sequence is not well formed"


def entity_count(sentences: Sequence[TaggedSentence], scheme: TagScheme) -> int:
    """Number of (strict) entities in labelled sentences."""
    return sum(len(extract_entities(s.tags, scheme)) for s in sentences if s.tags is not None)
