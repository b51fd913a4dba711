"""scripts/prepare_chinese.py on tiny fixtures: articles, BIO entities from the tags, de-duplicated sentiment."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from chinese_helpers import NEGATIVE, PD_LINES, POSITIVE, write_sentiment_dir, write_tagged
from lit_llm.datamodules.conll import read_conll
from lit_llm.text.entities import extract_entities
from lit_llm.text.segmentation import parse_tagged

REPO = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("_prepare_chinese", REPO / "scripts" / "prepare_chinese.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prep = load_script()


def test_articles_start_at_a_heading_after_body_text():
    paragraphs = [parse_tagged(line) for line in PD_LINES]
    articles = prep.group_articles(paragraphs * 2)
    # heading, body, body | heading, body, body (ends in a closing quote) | the same again
    assert [len(a) for a in articles] == [3, 3, 3, 3]
    assert articles[1][0] == paragraphs[3]


def test_entities_from_the_tags():
    pairs = parse_tagged(PD_LINES[1] + "  " + PD_LINES[2] + "  " + PD_LINES[5])
    sentences = prep.bio_sentences(pairs)
    spans = [("".join(c for c, _ in s[e.start : e.end]), e.type)
             for s in sentences for e in extract_entities([t for _, t in s], "BIO", "strict")]
    # 江/nr 泽民/nr is one person; 新华社/nt and 中共中央/nt organizations; ns places; 克林顿/nr one word
    assert spans == [("中共中央", "ORG"), ("江泽民", "PER"), ("北京", "LOC"), ("新华社", "ORG"), ("克林顿", "PER"),
                     ("美国", "LOC"), ("中国", "LOC")]
    # cut after 。 (a closing quote stays with its sentence), one character per token
    assert ["".join(c for c, _ in s) for s in sentences] == [
        "中共中央总书记、国家主席江泽民发表１９９８年新年讲话。", "同胞们、朋友们：在北京，我十分高兴。",
        "新华社记者报道。", "克林顿说：“美国和中国要合作。”"]
    assert prep.entity_words(parse_tagged("李/nr  鹏/nr  乔/nr  石/nr")) == [("李鹏", "PER"), ("乔石", "PER")]


def test_writes_every_set_in_the_formats_our_datamodules_read(tmp_path):
    tagged = write_tagged(tmp_path / "pd.txt", repeat=10)
    out = tmp_path / "data" / "zh"
    assert prep.main(["--tagged", str(tagged), "--sentiment-dir", str(write_sentiment_dir(tmp_path / "senti")),
                      "--out", str(out), "--fractions", "0.6", "0.2", "0.2"]) == 0
    # 20 articles of 3 paragraphs: 12 / 4 / 4 by article, the same articles for NER and the pre-training files
    assert len((out / "pretrain" / "train.txt").read_text(encoding="utf-8").splitlines()) == 12 * 3
    assert len((out / "pretrain" / "heldout.txt").read_text(encoding="utf-8").splitlines()) == 4 * 3
    for line in (out / "pretrain" / "train.txt").read_text(encoding="utf-8").splitlines():
        assert parse_tagged(line)  # the gold words and tags are kept
    counts = {}
    for split in ("train", "validation", "test"):
        sentences = read_conll(out / "ner" / f"{split}.conll")
        counts[split] = len(sentences)
        assert all(len(tok) == 1 for s in sentences for tok in s.tokens)
    assert sum(counts.values()) == 10 * 7  # each article pair (4 + 3 sentences) ten times
    assert 4 * 3 <= counts["validation"] <= 4 * 4  # four whole articles of 3 or 4 sentences

    rows = {split: [json.loads(line) for line in (out / "sentiment" / f"{split}.jsonl").read_text(
        encoding="utf-8").splitlines()] for split in ("train", "validation", "test")}
    texts = [r["text"] for split in rows.values() for r in split]
    assert len(texts) == len(set(texts))  # no sentence twice, so none in two splits
    # "不好用，退货。" twice in neg: kept once; "一般般" in both files: no clear label, dropped
    assert set(texts) == (set(NEGATIVE) | set(POSITIVE)) - {"一般般"}
    assert {r["label"] for split in rows.values() for r in split} == {"negative", "positive"}

    # the training reviews' text, jieba-segmented word/tag lines; no validation or test review
    reviews = (out / "pretrain" / "reviews.txt").read_text(encoding="utf-8").splitlines()
    joined = ["".join(word for word, _ in parse_tagged(line)) for line in reviews]
    assert joined == ["".join(r["text"].split()) for r in rows["train"]]
    assert any(len(word) > 1 for line in reviews for word, _ in parse_tagged(line))  # words, not characters


def test_the_sets_load_in_our_datamodules(tmp_path):
    from lit_llm.datamodules import TextClassificationDataModule, TokenClassificationDataModule
    from chinese_helpers import make_zh_tokenizer

    tok = tmp_path / "tok"
    make_zh_tokenizer(tok)
    out = tmp_path / "data" / "zh"
    prep.main(["--tagged", str(write_tagged(tmp_path / "pd.txt", repeat=10)), "--sentiment-dir",
               str(write_sentiment_dir(tmp_path / "s")), "--out", str(out), "--fractions", "0.6", "0.2", "0.2"])
    ner = TokenClassificationDataModule(str(tok), train_file=str(out / "ner" / "train.conll"),
                                        validation_file=str(out / "ner" / "validation.conll"), max_length=64)
    ner.setup("fit")
    assert set(ner.labels) == {"O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"}
    senti = TextClassificationDataModule(str(tok), train_file=str(out / "sentiment" / "train.jsonl"),
                                         validation_file=str(out / "sentiment" / "validation.jsonl"),
                                         text_field="text", label_field="label", max_length=32)
    senti.setup("fit")
    assert sorted(senti.labels) == ["negative", "positive"]


def test_malformed_tag_file_stops_with_file_and_line(tmp_path):
    tagged = write_tagged(tmp_path / "bad.txt", [PD_LINES[0], PD_LINES[1], "北京/ns  大学 /n"])
    with pytest.raises(SystemExit, match=r"bad.txt: line 3: item 2 '大学' is not a 'word/tag' pair"):
        prep.main(["--tagged", str(tagged), "--sentiment-dir", str(write_sentiment_dir(tmp_path / "s")),
                   "--out", str(tmp_path / "data" / "zh")])
    assert not (tmp_path / "data").exists()  # nothing written


def test_refuses_to_change_an_existing_file_and_writes_only_under_data(tmp_path):
    args = ["--tagged", str(write_tagged(tmp_path / "pd.txt", repeat=10)), "--sentiment-dir",
            str(write_sentiment_dir(tmp_path / "s"))]
    out = tmp_path / "data" / "zh"
    prep.main([*args, "--out", str(out)])
    prep.main([*args, "--out", str(out)])  # the same content again: fine
    with pytest.raises(SystemExit, match=r"exists with different content"):
        prep.main([*args, "--out", str(out), "--seed", "7"])
    with pytest.raises(SystemExit):
        prep.main([*args, "--out", str(tmp_path / "elsewhere")])


def test_without_jieba_the_review_corpus_is_skipped_with_a_line_saying_so(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "jieba", None)  # `import jieba` raises ImportError
    out = tmp_path / "data" / "zh"
    assert prep.main(["--tagged", str(write_tagged(tmp_path / "pd.txt", repeat=10)), "--sentiment-dir",
                      str(write_sentiment_dir(tmp_path / "s")), "--out", str(out), "--fractions", "0.6", "0.2",
                      "0.2"]) == 0
    assert "pretrain/reviews.txt: skipped, jieba is not installed (pip install jieba)" in capsys.readouterr().out
    assert not (out / "pretrain" / "reviews.txt").exists() and (out / "pretrain" / "train.txt").exists()
