"""Entity spans from BIO / BIOES tags and entity-level precision, recall and F1, as seqeval and conlleval score them.

Plain functions of tag lists, plus :class:`EntityMetric`, a torchmetrics ``Metric`` that accumulates the counts
over steps and sums them across ranks. Data modules (tag checking and repair) and modules (metrics, ``predict``
spans) both import this file.

Two ways to read a tag sequence, as in seqeval; in both an entity counts as found only when its type and both
boundaries match a gold entity (exact match, as in the CoNLL shared tasks):

- ``strict`` (seqeval ``mode="strict"``): an entity is a well-formed chunk of the scheme; in BIO it begins with
  ``B-X`` and goes on over ``I-X``; in BIOES it is ``S-X`` or ``B-X (I-X)* E-X``. Anything else (``I-X`` after
  ``O``, the ``I-LOC`` of ``B-PER I-LOC``, a BIOES chunk without its ``E-``) is no entity.
- ``default`` (seqeval's default, which reproduces the chunking of the ``conlleval`` script): any run of
  same-type tags is an entity, so ``I-X`` after ``O`` starts one and ``B-X I-X O`` counts in BIOES too.

On well-formed gold tags the two differ only on ill-formed predicted sequences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, cast

import torch
from torchmetrics import Metric

__all__ = [
    "TAG_SCHEMES",
    "TagScheme",
    "EntityMode",
    "Entity",
    "EntityScores",
    "check_scheme",
    "parse_tag",
    "entity_types",
    "labels_for_types",
    "infer_scheme",
    "extract_entities",
    "tags_from_entities",
    "first_invalid_tag",
    "repair_tags",
    "entity_scores",
    "format_entity_report",
    "EntityMetric",
]

TagScheme = Literal["BIO", "BIOES"]
EntityMode = Literal["strict", "default"]
TAG_SCHEMES: dict[str, tuple[str, ...]] = {"BIO": ("B", "I", "O"), "BIOES": ("B", "I", "O", "E", "S")}
MODES = ("strict", "default")


class Entity(NamedTuple):
    """A typed span of tokens ``[start, end)`` (end exclusive, unlike seqeval's inclusive end)."""

    type: str
    start: int
    end: int


def check_scheme(scheme: str) -> TagScheme:
    """Return ``scheme`` if it is ``BIO`` or ``BIOES``.

    Raises:
        ValueError: any other scheme, with the accepted names.
    """
    if scheme not in TAG_SCHEMES:
        raise ValueError(
            f"unknown tag scheme {scheme!r}: use 'BIO' (also called IOB2: every entity starts with B-) or 'BIOES' "
            "(B-, I-, E- for multi-token entities, S- for single tokens)."
        )
    return cast(TagScheme, scheme)  # checked just above


def parse_tag(tag: str) -> tuple[str, str]:
    """Split ``B-geo-loc`` into ``("B", "geo-loc")``; ``O`` gives ``("O", "")``.

    Raises:
        ValueError: a tag that is not ``O`` and not ``<prefix>-<type>`` with a B/I/E/S prefix.
    """
    if tag == "O":
        return "O", ""
    prefix, sep, type_ = tag.partition("-")
    if not sep or prefix not in ("B", "I", "E", "S") or not type_:
        raise ValueError(f"tag {tag!r} is not 'O' or '<B|I|E|S>-<TYPE>' (e.g. 'B-PER').")
    return prefix, type_


def entity_types(labels: Sequence[str]) -> list[str]:
    """The entity types of a label set, in first-seen order: ``["O", "B-PER", "I-PER"]`` gives ``["PER"]``."""
    return list(dict.fromkeys(parse_tag(t)[1] for t in labels if t != "O"))


def labels_for_types(types: Sequence[str], scheme: TagScheme) -> list[str]:
    """The full label list of ``scheme`` for ``types``: ``O`` then each type's prefixes, types sorted."""
    prefixes = [p for p in TAG_SCHEMES[check_scheme(scheme)] if p != "O"]
    return ["O"] + [f"{p}-{t}" for t in sorted(set(types)) for p in prefixes]


def infer_scheme(labels: Sequence[str]) -> TagScheme:
    """``BIOES`` if any label has an E- or S- prefix, else ``BIO``."""
    return "BIOES" if any(parse_tag(t)[0] in ("E", "S") for t in labels) else "BIO"


def _check_prefixes(tags: Sequence[str], scheme: TagScheme) -> list[tuple[str, str]]:
    allowed = TAG_SCHEMES[scheme]
    parsed = [parse_tag(t) for t in tags]
    for tag, (prefix, _) in zip(tags, parsed):
        if prefix not in allowed:
            raise ValueError(f"tag {tag!r} is not a {scheme} tag: {scheme} prefixes are {', '.join(allowed)}.")
    return parsed


def _strict(parsed: list[tuple[str, str]], scheme: TagScheme) -> list[Entity]:
    entities = []
    i, n = 0, len(parsed)
    while i < n:
        prefix, type_ = parsed[i]
        if scheme == "BIOES" and prefix == "S":
            entities.append(Entity(type_, i, i + 1))
            i += 1
            continue
        if prefix != "B":  # I-, E- or O outside a chunk: not the start of a well-formed entity
            i += 1
            continue
        j = i + 1
        while j < n and parsed[j] == ("I", type_):
            j += 1
        if scheme == "BIO":
            entities.append(Entity(type_, i, j))
            i = j
        elif j < n and parsed[j] == ("E", type_):  # BIOES: a chunk counts only when its E- closes it
            entities.append(Entity(type_, i, j + 1))
            i = j + 1
        else:
            i = j
    return entities


def _lenient(parsed: list[tuple[str, str]]) -> list[Entity]:
    # A port of seqeval.metrics.sequence_labeling.get_entities (end_of_chunk / start_of_chunk), end exclusive.
    entities = []
    prev_prefix, prev_type, begin = "O", "", 0
    for i, (prefix, type_) in enumerate([*parsed, ("O", "")]):
        if prev_prefix != "O" and (
            prev_prefix in ("E", "S") or prefix in ("B", "S", "O") or prev_type != type_
        ):
            entities.append(Entity(prev_type, begin, i))
        if prefix != "O" and (
            prefix in ("B", "S")
            or prev_prefix in ("E", "S", "O")
            or prev_type != type_
        ):
            begin = i
        prev_prefix, prev_type = prefix, type_
    return entities


def extract_entities(tags: Sequence[str], scheme: TagScheme = "BIO", mode: EntityMode = "strict") -> list[Entity]:
    """The entities of one tag sequence.

    Args:
        tags: one sentence's tags, e.g. ``["B-PER", "I-PER", "O"]``.
        scheme: ``BIO`` (IOB2) or ``BIOES``.
        mode: ``strict`` (well-formed chunks only) or ``default`` (seqeval's lenient chunking).

    Raises:
        ValueError: an unknown scheme or mode, a malformed tag, or a prefix the scheme does not have.

    Example::
        >>> extract_entities(["B-PER", "I-PER", "O", "I-LOC"])
        [Entity(type='PER', start=0, end=2)]
        >>> extract_entities(["B-PER", "I-PER", "O", "I-LOC"], mode="default")
        [Entity(type='PER', start=0, end=2), Entity(type='LOC', start=3, end=4)]
    """
    scheme = check_scheme(scheme)
    if mode not in MODES:
        raise ValueError(f"unknown entity mode {mode!r}: use 'strict' (seqeval mode='strict') or 'default'.")
    parsed = _check_prefixes(tags, scheme)
    return _strict(parsed, scheme) if mode == "strict" else _lenient(parsed)


def tags_from_entities(entities: Sequence[Entity], length: int, scheme: TagScheme = "BIO") -> list[str]:
    """Encode non-overlapping entities as ``length`` tags of ``scheme`` (the inverse of strict extraction).

    Example::
        >>> tags_from_entities([Entity("PER", 0, 2), Entity("LOC", 3, 4)], 4, "BIOES")
        ['B-PER', 'E-PER', 'O', 'S-LOC']
    """
    scheme = check_scheme(scheme)
    tags = ["O"] * length
    for ent in entities:
        if scheme == "BIOES" and ent.end - ent.start == 1:
            tags[ent.start] = f"S-{ent.type}"
            continue
        tags[ent.start] = f"B-{ent.type}"
        for k in range(ent.start + 1, ent.end):
            tags[k] = f"I-{ent.type}"
        if scheme == "BIOES":
            tags[ent.end - 1] = f"E-{ent.type}"
    return tags


def first_invalid_tag(tags: Sequence[str], scheme: TagScheme = "BIO") -> int | None:
    """Index of the first tag that breaks ``scheme`` (e.g. ``I-X`` with no ``B-X`` before it), or None.

    A sequence is valid when re-encoding its strict entities gives it back unchanged.

    Raises:
        ValueError: a malformed tag or a prefix the scheme does not have.
    """
    expected = tags_from_entities(extract_entities(tags, scheme, "strict"), len(tags), scheme)
    return next((i for i, (a, b) in enumerate(zip(tags, expected)) if a != b), None)


def repair_tags(tags: Sequence[str], scheme: TagScheme = "BIO") -> list[str]:
    """Make a sequence well formed: read it leniently, write it back strictly (``O I-X`` becomes ``O B-X``).

    Example::
        >>> repair_tags(["O", "I-PER", "I-PER", "I-LOC"])
        ['O', 'B-PER', 'I-PER', 'B-LOC']
    """
    return tags_from_entities(extract_entities(tags, scheme, "default"), len(tags), scheme)


@dataclass
class EntityScores:
    """Per-type entity counts and the precision / recall / F1 computed from them (0 where undefined)."""

    types: list[str]
    tp: list[int]
    n_pred: list[int]
    n_gold: list[int]
    token_correct: int = 0
    token_total: int = 0
    per_type: dict[str, dict[str, float]] = field(init=False)
    micro: dict[str, float] = field(init=False)
    macro: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        # Like seqeval, report (and macro-average) only the types that occur in the gold or the predictions.
        seen = [k for k in range(len(self.types)) if self.n_gold[k] + self.n_pred[k] > 0]
        self.types = [self.types[k] for k in seen]
        self.tp, self.n_pred, self.n_gold = ([xs[k] for k in seen] for xs in (self.tp, self.n_pred, self.n_gold))
        self.per_type = {t: _prf(tp, p, g) for t, tp, p, g in zip(self.types, self.tp, self.n_pred, self.n_gold)}
        self.micro = _prf(sum(self.tp), sum(self.n_pred), sum(self.n_gold))
        n = max(len(self.types), 1)
        self.macro = {k: sum(row[k] for row in self.per_type.values()) / n for k in ("precision", "recall", "f1")}
        self.macro["support"] = float(sum(self.n_gold))

    @property
    def accuracy(self) -> float:
        """Token accuracy (over the tokens that were scored)."""
        return self.token_correct / self.token_total if self.token_total else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"per_type": self.per_type, "micro": self.micro, "macro": self.macro, "accuracy": self.accuracy}


def _prf(tp: int, n_pred: int, n_gold: int) -> dict[str, float]:
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": float(n_gold)}


def _counts(
    gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], scheme: TagScheme, mode: EntityMode
) -> tuple[dict[str, list[int]], int, int]:
    if len(gold) != len(pred):
        raise ValueError(
            f"{len(gold)} gold sentences but {len(pred)} predicted ones; give one prediction per sentence."
        )
    counts: dict[str, list[int]] = {}  # type -> [tp, n_pred, n_gold]
    correct = total = 0
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted tags.")
        gold_ents = set(extract_entities(g, scheme, mode))
        pred_ents = set(extract_entities(p, scheme, mode))
        for ent in gold_ents:
            counts.setdefault(ent.type, [0, 0, 0])[2] += 1
        for ent in pred_ents:
            row = counts.setdefault(ent.type, [0, 0, 0])
            row[1] += 1
            row[0] += ent in gold_ents
        correct += sum(a == b for a, b in zip(g, p))
        total += len(g)
    return counts, correct, total


def entity_scores(
    gold: Sequence[Sequence[str]],
    pred: Sequence[Sequence[str]],
    scheme: TagScheme = "BIO",
    mode: EntityMode = "strict",
) -> EntityScores:
    """Entity-level precision / recall / F1 per type, micro and macro averaged, plus token accuracy.

    Args:
        gold: the gold tag sequences, one per sentence.
        pred: the predicted tag sequences, aligned with ``gold``.
        scheme: ``BIO`` or ``BIOES``.
        mode: ``strict`` (seqeval ``mode="strict"``) or ``default`` (seqeval's default).

    Example::
        >>> entity_scores([["B-PER", "I-PER", "O"]], [["B-PER", "O", "O"]]).micro["f1"]
        0.0
    """
    counts, correct, total = _counts(gold, pred, scheme, mode)
    types = sorted(counts)
    return EntityScores(
        types=types,
        tp=[counts[t][0] for t in types],
        n_pred=[counts[t][1] for t in types],
        n_gold=[counts[t][2] for t in types],
        token_correct=correct,
        token_total=total,
    )


def format_entity_report(scores: EntityScores, digits: int = 4) -> str:
    """seqeval's ``classification_report`` layout: one row per type, then micro and macro averages."""
    rows = [*((t, scores.per_type[t]) for t in scores.types), ("micro avg", scores.micro), ("macro avg", scores.macro)]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}", ""]
    for k, (name, row) in enumerate(rows):
        if k == len(scores.types):
            lines.append("")
        lines.append(
            f"{name:>{width}} {row['precision']:>9.{digits}f} {row['recall']:>9.{digits}f} "
            f"{row['f1']:>9.{digits}f} {int(row['support']):>9}"
        )
    lines.append(f"\ntoken accuracy {scores.accuracy:.{digits}f} ({scores.token_correct}/{scores.token_total})")
    return "\n".join(lines) + "\n"


class EntityMetric(Metric):
    """Entity-level P / R / F1 accumulated over batches and summed across ranks (counts, so exact under DDP).

    ``update`` takes label-id tensors ``(B, T)`` where ``target == ignore_index`` marks positions not scored
    (padding, special tokens, non-first sub-tokens), or lists of tag strings. ``compute`` returns flat scalars:
    ``precision_micro``, ``recall_micro``, ``f1_micro``, ``f1_macro``, ``accuracy`` and ``f1_<type>`` per type;
    the full :class:`EntityScores` of the last ``compute`` is kept in ``self.scores``.

    Args:
        labels: label names in id order, e.g. ``["O", "B-PER", "I-PER"]``.
        scheme: ``BIO`` or ``BIOES``.
        mode: ``strict`` or ``default`` (see the module docstring).
        ignore_index: the target id of positions to skip.

    Example::
        metric = EntityMetric(["O", "B-PER", "I-PER"])
        metric.update(logits.argmax(-1), batch["labels"])
        metric.compute()["f1_micro"]
    """

    full_state_update = False
    # States registered by add_state, declared so that type checkers see Tensors (torchmetrics' own idiom) rather
    # than nn.Module.__getattr__'s ``Tensor | Module``.
    tp: torch.Tensor
    n_pred: torch.Tensor
    n_gold: torch.Tensor
    token_correct: torch.Tensor
    token_total: torch.Tensor

    def __init__(
        self,
        labels: Sequence[str],
        scheme: TagScheme = "BIO",
        mode: EntityMode = "strict",
        ignore_index: int = -100,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.scheme = check_scheme(scheme)
        if mode not in MODES:
            raise ValueError(f"EntityMetric(mode={mode!r}): use 'strict' or 'default'.")
        self.mode: EntityMode = mode
        self.labels = list(labels)
        _check_prefixes(self.labels, self.scheme)
        self.types = sorted(entity_types(self.labels))
        self._type_index = {t: i for i, t in enumerate(self.types)}
        self.ignore_index = ignore_index
        n = len(self.types)
        # (n_types,) counts; summing them across ranks gives exactly the single-process result.
        self.add_state("tp", torch.zeros(n, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("n_pred", torch.zeros(n, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("n_gold", torch.zeros(n, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("token_correct", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("token_total", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.scores: EntityScores | None = None

    def _to_tags(self, preds: torch.Tensor, target: torch.Tensor) -> tuple[list[list[str]], list[list[str]]]:
        if preds.shape != target.shape:
            raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} must have the same shape.")
        gold, pred = [], []
        for p_row, t_row in zip(preds.tolist(), target.tolist()):  # (T,) each
            keep = [k for k, t in enumerate(t_row) if t != self.ignore_index]
            gold.append([self.labels[t_row[k]] for k in keep])
            pred.append([self.labels[p_row[k]] for k in keep])
        return gold, pred

    def update(
        self, preds: torch.Tensor | Sequence[Sequence[str]], target: torch.Tensor | Sequence[Sequence[str]]
    ) -> None:
        if isinstance(preds, torch.Tensor) and isinstance(target, torch.Tensor):
            gold, pred = self._to_tags(preds, target)
        else:
            gold, pred = list(target), list(preds)  # type: ignore[arg-type]
        counts, correct, total = _counts(gold, pred, self.scheme, self.mode)
        for type_, (tp, n_pred, n_gold) in counts.items():
            if type_ not in self._type_index:
                raise ValueError(f"entity type {type_!r} is not among the metric's labels ({', '.join(self.labels)}).")
            k = self._type_index[type_]
            self.tp[k] += tp
            self.n_pred[k] += n_pred
            self.n_gold[k] += n_gold
        self.token_correct += correct
        self.token_total += total

    def compute(self) -> dict[str, torch.Tensor]:
        scores = EntityScores(
            types=self.types,
            tp=self.tp.tolist(),
            n_pred=self.n_pred.tolist(),
            n_gold=self.n_gold.tolist(),
            token_correct=int(self.token_correct),
            token_total=int(self.token_total),
        )
        self.scores = scores
        out = {f"{k}_micro": scores.micro[k] for k in ("precision", "recall", "f1")}
        out["f1_macro"] = scores.macro["f1"]
        out["accuracy"] = scores.accuracy
        out.update({f"f1_{t}": scores.per_type[t]["f1"] for t in scores.types})
        return {k: torch.tensor(v, dtype=torch.float32) for k, v in out.items()}
