"""Entity extraction and entity-level scores, checked against hand-worked examples and against seqeval itself.

Numbers are worked out by hand from seqeval's definitions: ``mode="strict"`` counts only well-formed chunks of the
scheme; the default mode chunks as conlleval does (``I-X`` after ``O`` starts an entity). seqeval (the test extra)
is then the referee on random tag sequences, in both modes and both schemes.
"""

from __future__ import annotations

import pytest
import torch

from lit_llm.text.entities import (
    Entity,
    EntityMetric,
    entity_scores,
    entity_types,
    extract_entities,
    first_invalid_tag,
    format_entity_report,
    infer_scheme,
    labels_for_types,
    parse_tag,
    repair_tags,
    tags_from_entities,
)

E = Entity


@pytest.mark.parametrize(
    ("tags", "scheme", "strict", "default"),
    [
        # well formed: both modes agree
        (["B-PER", "I-PER", "O", "B-LOC"], "BIO", [E("PER", 0, 2), E("LOC", 3, 4)], [E("PER", 0, 2), E("LOC", 3, 4)]),
        (["B-PER", "B-PER", "I-PER"], "BIO", [E("PER", 0, 1), E("PER", 1, 3)], [E("PER", 0, 1), E("PER", 1, 3)]),
        # I- with no B- before it: no entity in strict mode, an entity in the default mode
        (["O", "I-PER", "I-PER"], "BIO", [], [E("PER", 1, 3)]),
        (["I-PER"], "BIO", [], [E("PER", 0, 1)]),
        # B-PER I-LOC: the I-LOC is dropped by strict, a separate LOC entity by default
        (["B-PER", "I-LOC"], "BIO", [E("PER", 0, 1)], [E("PER", 0, 1), E("LOC", 1, 2)]),
        # types with hyphens (WNUT's geo-loc) split on the first hyphen only
        (["B-geo-loc", "I-geo-loc"], "BIO", [E("geo-loc", 0, 2)], [E("geo-loc", 0, 2)]),
        # BIOES
        (["S-PER", "B-LOC", "I-LOC", "E-LOC"], "BIOES", [E("PER", 0, 1), E("LOC", 1, 4)],
         [E("PER", 0, 1), E("LOC", 1, 4)]),
        # E with no B before it
        (["O", "E-PER"], "BIOES", [], [E("PER", 1, 2)]),
        # a chunk that never gets its E-
        (["B-PER", "I-PER", "O"], "BIOES", [], [E("PER", 0, 2)]),
        # E closes the chunk; a second E starts (default) or is dropped (strict)
        (["B-PER", "E-PER", "E-PER"], "BIOES", [E("PER", 0, 2)], [E("PER", 0, 2), E("PER", 2, 3)]),
        ([], "BIO", [], []),
    ],
)
def test_extract_entities_strict_and_default(tags, scheme, strict, default):
    assert extract_entities(tags, scheme, "strict") == strict
    assert extract_entities(tags, scheme, "default") == default


def test_scores_where_strict_and_default_differ_bio():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["I-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-LOC"]]
    # gold: PER(0,2), LOC(3,4) | ORG(0,1): 3 entities.
    # strict pred: LOC(3,4) | ORG(0,1): 2 entities, both right -> P = 1, R = 2/3, F1 = 0.8.
    strict = entity_scores(gold, pred, "BIO", "strict")
    assert strict.micro["precision"] == 1.0
    assert strict.micro["recall"] == pytest.approx(2 / 3)
    assert strict.micro["f1"] == pytest.approx(0.8)
    assert strict.per_type["PER"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1.0}
    assert strict.macro["f1"] == pytest.approx((0 + 1 + 1) / 3)
    # default pred: PER(0,2), LOC(3,4) | ORG(0,1), LOC(1,2): 4 entities, 3 right -> P = 3/4, R = 1, F1 = 6/7.
    default = entity_scores(gold, pred, "BIO", "default")
    assert default.micro["precision"] == 0.75
    assert default.micro["recall"] == 1.0
    assert default.micro["f1"] == pytest.approx(6 / 7)
    assert default.per_type["LOC"]["precision"] == 0.5
    assert default.per_type["LOC"]["f1"] == pytest.approx(2 / 3)
    assert default.macro["f1"] == pytest.approx((1 + 2 / 3 + 1) / 3)
    # token accuracy does not depend on the mode: 3 of 4 + 1 of 2 tags right.
    assert strict.accuracy == default.accuracy == pytest.approx(4 / 6)


def test_scores_where_strict_and_default_differ_bioes():
    gold = [["B-PER", "E-PER", "O", "S-LOC"]]
    pred = [["B-PER", "I-PER", "O", "E-LOC"]]
    # strict: the prediction has no well-formed chunk -> nothing predicted, 2 missed: P = R = F1 = 0.
    strict = entity_scores(gold, pred, "BIOES", "strict")
    assert (strict.micro["precision"], strict.micro["recall"], strict.micro["f1"]) == (0.0, 0.0, 0.0)
    # default: PER(0,2) and LOC(3,4) both match -> 1.
    default = entity_scores(gold, pred, "BIOES", "default")
    assert (default.micro["precision"], default.micro["recall"], default.micro["f1"]) == (1.0, 1.0, 1.0)


def test_boundary_and_type_must_both_match():
    gold = [["B-PER", "I-PER", "O"], ["B-LOC", "O", "O"]]
    pred = [["B-PER", "O", "O"], ["B-ORG", "O", "O"]]  # wrong right boundary; right span, wrong type
    scores = entity_scores(gold, pred)
    assert scores.micro["f1"] == 0.0
    assert scores.types == ["LOC", "ORG", "PER"]  # seqeval reports every type seen in gold or predictions
    assert scores.per_type["ORG"]["support"] == 0.0


def test_partial_match_numbers():
    gold = [["B-PER", "I-PER", "O", "B-LOC", "O", "B-PER"]]
    pred = [["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O"]]
    # gold: PER(0,2), LOC(3,4), PER(5,6); pred: PER(0,2), LOC(3,5): tp 1, P = 1/2, R = 1/3, F1 = 2/5.
    scores = entity_scores(gold, pred)
    assert scores.micro["precision"] == 0.5
    assert scores.micro["recall"] == pytest.approx(1 / 3)
    assert scores.micro["f1"] == pytest.approx(0.4)
    assert scores.per_type["PER"]["recall"] == 0.5
    assert scores.accuracy == pytest.approx(4 / 6)
    text = format_entity_report(scores)
    assert "micro avg" in text and "PER" in text and "token accuracy 0.6667 (4/6)" in text


def test_encode_repair_and_validity():
    ents = [E("PER", 0, 2), E("LOC", 3, 4)]
    assert tags_from_entities(ents, 4, "BIO") == ["B-PER", "I-PER", "O", "B-LOC"]
    assert tags_from_entities(ents, 4, "BIOES") == ["B-PER", "E-PER", "O", "S-LOC"]
    assert first_invalid_tag(["B-PER", "I-PER", "O"], "BIO") is None
    assert first_invalid_tag(["O", "I-PER"], "BIO") == 1
    assert first_invalid_tag(["B-PER", "I-LOC"], "BIO") == 1
    assert first_invalid_tag(["B-PER", "I-PER", "O"], "BIOES") == 0
    assert repair_tags(["O", "I-PER", "I-PER", "I-LOC"], "BIO") == ["O", "B-PER", "I-PER", "B-LOC"]
    assert repair_tags(["B-PER", "I-PER", "O"], "BIOES") == ["B-PER", "E-PER", "O"]


def test_label_helpers():
    assert parse_tag("B-geo-loc") == ("B", "geo-loc")
    assert parse_tag("O") == ("O", "")
    assert entity_types(["O", "B-PER", "I-PER", "B-LOC"]) == ["PER", "LOC"]
    assert labels_for_types(["PER", "LOC"], "BIO") == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert labels_for_types(["X"], "BIOES") == ["O", "B-X", "I-X", "E-X", "S-X"]
    assert infer_scheme(["O", "B-X", "S-X"]) == "BIOES"
    assert infer_scheme(["O", "B-X", "I-X"]) == "BIO"


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: extract_entities(["O"], "IOB1"), "unknown tag scheme 'IOB1'"),
        (lambda: extract_entities(["O"], "BIO", "lenient"), "unknown entity mode 'lenient'"),
        (lambda: extract_entities(["X-PER"]), "tag 'X-PER' is not 'O' or"),
        (lambda: extract_entities(["PER"]), "tag 'PER' is not 'O' or"),
        (lambda: extract_entities(["S-PER"], "BIO"), "tag 'S-PER' is not a BIO tag"),
        (lambda: entity_scores([["O"]], [["O"], ["O"]]), "1 gold sentences but 2 predicted"),
        (lambda: entity_scores([["O", "O"]], [["O"]]), "sentence 0: 2 gold tags but 1 predicted"),
        (lambda: EntityMetric(["O", "B-X"], scheme="BILOU"), "unknown tag scheme 'BILOU'"),
        (lambda: EntityMetric(["O", "B-X"], mode="loose"), "mode='loose'"),
    ],
)
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def test_metric_from_ids_skips_ignored_positions():
    metric = EntityMetric(LABELS)
    # Row 0: [CLS] B-PER I-PER(sub-token, ignored) I-PER O [SEP]; predicted I-PER where gold says I-PER.
    target = torch.tensor([[-100, 1, -100, 2, 0, -100], [-100, 3, 0, -100, -100, -100]])
    preds = torch.tensor([[0, 1, 4, 2, 0, 0], [0, 1, 0, 0, 0, 0]])
    metric.update(preds, target)
    out = metric.compute()
    # gold: PER(0,2) | LOC(0,1); pred: PER(0,2) | PER(0,1) -> tp 1 of 2 predicted, 2 gold.
    assert out["precision_micro"].item() == 0.5
    assert out["recall_micro"].item() == 0.5
    assert out["f1_micro"].item() == 0.5
    assert out["accuracy"].item() == pytest.approx(4 / 5)
    assert out["f1_PER"].item() == pytest.approx(2 / 3)
    assert metric.scores is not None and metric.scores.tp == [0, 1]


def test_metric_accumulates_and_merges_like_one_pass():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "O"], ["O", "B-PER"]]
    pred = [["B-PER", "I-PER", "O", "B-PER"], ["I-LOC", "O"], ["O", "B-PER"]]
    whole = EntityMetric(LABELS, mode="default")
    whole.update(pred, gold)
    first, second = EntityMetric(LABELS, mode="default"), EntityMetric(LABELS, mode="default")
    first.update(pred[:2], gold[:2])
    second.update(pred[2:], gold[2:])
    first.merge_state(second)  # what the sum across ranks does
    expected = entity_scores(gold, pred, mode="default")
    for metric in (whole, first):
        out = metric.compute()
        assert out["f1_micro"].item() == pytest.approx(expected.micro["f1"])
    # default: pred PER(0,2), PER(3,4) | LOC(0,1) | PER(1,2) -> tp 3 of 4, gold 4: F1 = 0.75
    assert expected.micro["f1"] == 0.75


def test_metric_rejects_unknown_type():
    metric = EntityMetric(LABELS)
    with pytest.raises(ValueError, match="entity type 'ORG' is not among the metric's labels"):
        metric.update([["B-ORG"]], [["O"]])


def _ddp_worker(rank: int, world_size: int, port: int, gold, pred, out_dir) -> None:
    import json

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    metric = EntityMetric(LABELS, mode="strict")
    metric.update(pred[rank::world_size], gold[rank::world_size])  # each rank sees half the sentences
    result = metric.compute()  # syncs: sums the counts across ranks
    (out_dir / f"rank{rank}.json").write_text(json.dumps({k: float(v) for k, v in result.items()}))
    dist.destroy_process_group()


@pytest.mark.slow
def test_metric_sums_counts_across_ranks(tmp_path):
    import json
    import socket

    import torch.multiprocessing as mp

    gold = [["B-PER", "I-PER", "O"], ["B-LOC", "O"], ["O", "B-PER"], ["B-LOC", "I-LOC"]]
    pred = [["B-PER", "I-PER", "O"], ["I-LOC", "O"], ["O", "B-LOC"], ["B-LOC", "I-LOC"]]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_ddp_worker, args=(2, port, gold, pred, tmp_path), nprocs=2, join=True, start_method="fork")
    out = {rank: json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)}
    # strict: pred PER(0,2) | - | LOC(1,2) | LOC(0,2): tp 2 of 3 predicted, 4 gold -> P 2/3, R 1/2, F1 4/7
    expected = entity_scores(gold, pred)
    assert expected.micro["f1"] == pytest.approx(4 / 7)
    for rank in (0, 1):
        assert out[rank]["f1_micro"] == pytest.approx(4 / 7)
        assert out[rank]["precision_micro"] == pytest.approx(2 / 3)
        assert out[rank]["accuracy"] == pytest.approx(expected.accuracy)


# ------------------------------------------------------------------------------------------ seqeval as the referee
def _random_tags(rng, scheme: str, n_sentences: int = 150) -> list[list[str]]:
    prefixes = list(TAG_SCHEMES_FOR_TEST[scheme])
    out = []
    for _ in range(n_sentences):
        length = rng.randint(1, 9)
        out.append([
            "O" if (p := rng.choice(prefixes)) == "O" else f"{p}-{rng.choice(['PER', 'LOC', 'ORG'])}"
            for _ in range(length)
        ])
    return out


TAG_SCHEMES_FOR_TEST = {"BIO": ("B", "I", "O", "O"), "BIOES": ("B", "I", "O", "E", "S", "O")}


@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_entities_and_scores_agree_with_seqeval_on_random_tags(scheme, seed):
    """Random (mostly ill-formed) sequences: the same entities and the same micro / macro P, R, F1 as seqeval."""
    import random

    seqeval_metrics = pytest.importorskip("seqeval.metrics")
    from seqeval.metrics.sequence_labeling import get_entities
    from seqeval.scheme import IOB2, IOBES, Entities

    rng = random.Random(seed)
    gold, pred = _random_tags(rng, scheme), _random_tags(rng, scheme)
    pred = [p[: len(g)] + ["O"] * (len(g) - len(p)) for g, p in zip(gold, pred)]  # aligned lengths
    seqeval_scheme = IOB2 if scheme == "BIO" else IOBES

    for tags in gold + pred:
        # default mode: seqeval's get_entities, end inclusive
        assert extract_entities(tags, scheme, "default") == [E(t, s, e + 1) for t, s, e in get_entities(tags)]
        # strict mode: seqeval.scheme.Entities, end exclusive
        strict = Entities([tags], seqeval_scheme).entities[0]
        assert extract_entities(tags, scheme, "strict") == [E(e.tag, e.start, e.end) for e in strict]

    for mode, kwargs in (("default", {}), ("strict", {"mode": "strict", "scheme": seqeval_scheme})):
        ours = entity_scores(gold, pred, scheme, mode)
        for average, row in (("micro", ours.micro), ("macro", ours.macro)):
            for name, fn in (("precision", seqeval_metrics.precision_score), ("recall", seqeval_metrics.recall_score),
                             ("f1", seqeval_metrics.f1_score)):
                expected = fn(gold, pred, average=average, zero_division=0, **kwargs)
                assert row[name] == pytest.approx(expected), (mode, average, name)
