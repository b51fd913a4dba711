"""Whole-word masking for Chinese: word boundaries from jieba or pre-segmented text, aligned to the tokens.

The expected groups below were checked by hand: each is one word of the sentence, and all its characters (and
all the pieces of a Latin word in it) are masked together.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from chinese_helpers import PD_LINES, SENTENCES, groups, make_zh_tokenizer, write_tagged
from lit_llm.datamodules.corpus import TextCorpusDataModule, tokenize_texts
from lit_llm.datamodules.packing import tokenize_documents
from lit_llm.errors import InvalidArgumentError, UserInputError
from lit_llm.text.masking import mask_tokens
from lit_llm.text.segmentation import (
    MAX_WORD_TOKENS,
    SegmentationError,
    join_words,
    parse_tagged,
    segment,
    word_starts_for_texts,
)
from lit_llm.text.tokenizer_training import train_tokenizer


@pytest.fixture(scope="module")
def zh_tokenizer():
    return make_zh_tokenizer()


def masked_together(text: str, mode: str, tokenizer) -> list[str]:
    plain, spans = segment(text, mode)
    enc = tokenizer(plain, return_offsets_mapping=True, return_special_tokens_mask=True)
    flags = word_starts_for_texts([plain], [spans], tokenizer, max_length=None, add_special_tokens=True)[0]
    return groups(plain, flags, enc["offset_mapping"], enc["special_tokens_mask"])


HAND_CHECKED = [
    # (text, mode, the words masked together)
    (SENTENCES[0], "jieba", ["北京大学", "的", "学生", "在", "清华大学", "附近", "散步", "。"]),
    # mixed scripts: a Latin word's WordPiece pieces and a number stay one word; the space is no word
    (SENTENCES[1], "jieba", ["我用", "Windows", "98", "写", "了", "3", "个", "程序", "，", "真不错", "！"]),
    # full-width Latin letters, digits and punctuation: jieba reads them NFKC (WTO, 2026), spans stay full-width
    (SENTENCES[2], "jieba", ["ＷＴＯ", "规则", "，", "２０２６", "年", "。"]),
    # gold words of a word/tag line: the surname and the given name are two words in People's Daily
    ("江/nr  泽民/nr  发表/v  １９９８年/t  新年/t  讲话/n  。/w", "tagged",
     ["江", "泽民", "发表", "１９９８年", "新年", "讲话", "。"]),
    ("质量 不错 ， 物流 很快 。", "whitespace", ["质量", "不错", "，", "物流", "很快", "。"]),
]


@pytest.mark.parametrize(("text", "mode", "expected"), HAND_CHECKED, ids=[h[1] + str(i) for i, h in
                                                                          enumerate(HAND_CHECKED)])
def test_hand_checked_words_are_masked_together(zh_tokenizer, text, mode, expected):
    assert masked_together(text, mode, zh_tokenizer) == expected


def test_tokens_of_a_word_are_selected_together(zh_tokenizer):
    text, spans = segment(SENTENCES[0], "jieba")
    enc = zh_tokenizer([text] * 64, return_special_tokens_mask=True, return_tensors="pt")
    flags = word_starts_for_texts([text] * 64, [spans] * 64, zh_tokenizer, max_length=None, add_special_tokens=True)
    out = mask_tokens(enc["input_ids"], enc["special_tokens_mask"], mask_token_id=zh_tokenizer.mask_token_id,
                      vocab_size=len(zh_tokenizer), mlm_probability=0.3, word_starts=torch.tensor(flags),
                      generator=torch.Generator().manual_seed(0))
    selected = out.labels != -100  # (64, T)
    # token positions of each word: [CLS] 北京大学 的 学生 在 清华大学 附近 散步 。 [SEP]
    words = [[1, 2, 3, 4], [5], [6, 7], [8], [9, 10, 11, 12], [13, 14], [15, 16], [17]]
    for row in selected:
        for positions in words:
            assert len(set(row[positions].tolist())) == 1, (row, positions)  # all or none of the word
    assert 0.2 < selected[:, 1:-1].float().mean() < 0.45  # about 30% of the words, by their characters
    assert not selected[:, [0, -1]].any()  # [CLS] / [SEP] never


def test_a_run_the_segmenter_cannot_split_is_masked_token_by_token(zh_tokenizer, tiny_tokenizer):
    # jieba gives up on a long run of letters: one "word" of 14 single-letter tokens, more than MAX_WORD_TOKENS
    run = "qzxjkvwqzxjkvw"
    assert segment(run + "是什么", "jieba")[1][0] == (0, len(run))
    assert len(tiny_tokenizer.tokenize(run)) == 14 > MAX_WORD_TOKENS
    assert masked_together(run + "是什么", "jieba", tiny_tokenizer) == [*run, "是", "什么"]
    # an unsegmented line read as "whitespace" text: one 16-character "word", masked character by character
    line = "北京大学的学生在清华大学附近散步"
    assert masked_together(line, "whitespace", zh_tokenizer) == list(line)


def test_empty_and_blank_lines_are_no_documents(zh_tokenizer):
    for mode in ("jieba", "tagged", "whitespace"):
        last = "北京/ns  大学/n" if mode == "tagged" else "北京 大学" if mode == "whitespace" else "北京大学"
        cols = tokenize_texts(["", "   ", None, last], zh_tokenizer, None, True, mode)
        assert cols["input_ids"][:3] == [[], [], []], mode
        assert len(cols["word_starts"][3]) == len(cols["input_ids"][3]) == 6  # [CLS] 北 京 大 学 [SEP]


def test_english_path_unchanged(tiny_tokenizer):
    texts = ["the movie was really good", "", "john loved paris"]
    assert tokenize_texts(texts, tiny_tokenizer, None, True) == tokenize_documents(texts, tiny_tokenizer)
    # jieba on English splits at spaces, so the word starts are the tokenizer's own
    assert tokenize_texts(texts, tiny_tokenizer, None, True, "jieba") == tokenize_documents(texts, tiny_tokenizer)


def test_join_words_keeps_latin_words_apart():
    assert join_words(["我", "用", "Windows", "98", "写"]) == ("我用Windows 98写", [(0, 1), (1, 2), (2, 9), (10, 12),
                                                                                 (12, 13)])


@pytest.mark.parametrize("item", ["充满", "/v", "充满/", "充满/1", "充满/v/"])
def test_malformed_word_tag_pair(item):
    with pytest.raises(SegmentationError, match=rf"x.txt: line 3: item 2 '{item}' is not a 'word/tag' pair"):
        parse_tagged(f"迈向/v {item} 希望/n", "x.txt: line 3")
    assert parse_tagged("１/２/m  的/u") == [("１/２", "m"), ("的", "u")]  # the tag follows the last slash


def test_malformed_tag_file_names_file_and_line(tmp_path, zh_tokenizer):
    tok_dir = tmp_path / "tok"
    zh_tokenizer.save_pretrained(tok_dir)
    corpus = write_tagged(tmp_path / "corpus.txt", [PD_LINES[0], "迈向/v  充满  希望/n", PD_LINES[1]])
    dm = TextCorpusDataModule(data_files=str(corpus), tokenizer=str(tok_dir), word_boundaries="tagged",
                              block_size=16, cache_dir=str(tmp_path / "hf"))
    with pytest.raises(SegmentationError, match=r"corpus.txt: line 2: item 2 '充满' is not a 'word/tag' pair"):
        dm.setup("fit")
    assert issubclass(SegmentationError, UserInputError)  # the CLI prints it without a traceback


def test_jieba_output_that_does_not_add_up(monkeypatch):
    import jieba

    monkeypatch.setattr(jieba, "lcut", lambda text: [text[:-1]])
    with pytest.raises(SegmentationError, match=r"doc 7: jieba's words .* do not add up to the text '北京大学'"):
        segment("北京大学", "jieba", "doc 7")


def test_unknown_mode_and_argument_errors(tmp_path):
    with pytest.raises(ValueError, match=r"segment\(mode='tokenizer'\): choose one of"):
        segment("北京", "tokenizer")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=r"word_boundaries='ltp': choose one of \['tokenizer', 'jieba'"):
        TextCorpusDataModule(data_files="x.txt", tokenizer="t", word_boundaries="ltp")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=r"tokenizer_nfkc=True with train_tokenizer=None"):
        TextCorpusDataModule(data_files="x.txt", tokenizer="t", tokenizer_nfkc=True)
    with pytest.raises(ValueError, match=r"nfkc=True\) is for kind='wordpiece'"):
        train_tokenizer(["北京"], "bpe", vocab_size=300, nfkc=True)


def test_tokenizer_is_character_level_and_folds_full_width(zh_tokenizer):
    text = "北京大学的学生"
    assert zh_tokenizer.tokenize(text) == list(text)  # one token per character, no ## pieces
    assert zh_tokenizer("ＷＴＯ，１２")["input_ids"] == zh_tokenizer("WTO,12")["input_ids"]
    enc = zh_tokenizer("ＷＴＯ，１２", return_offsets_mapping=True, add_special_tokens=False)
    pieces = ["ＷＴＯ，１２"[a:b] for a, b in enc["offset_mapping"]]
    assert "".join(pieces) == "ＷＴＯ，１２"  # offsets point into the original, full-width text


# -- the datamodule: segmentation once, in the cached tokenization ---------------------------------------------
def tagged_dm(tmp_path: Path, **kwargs) -> TextCorpusDataModule:
    corpus = tmp_path / "pd.txt"
    if not corpus.exists():  # rewriting it would change its mtime, and so the datasets fingerprint
        write_tagged(corpus, repeat=4)
    kwargs.setdefault("data_files", str(corpus))
    kwargs.setdefault("train_tokenizer", "wordpiece")
    kwargs.setdefault("tokenizer_nfkc", kwargs["train_tokenizer"] is not None)
    return TextCorpusDataModule(word_boundaries="tagged", vocab_size=200, block_size=32,
                                packing=False, val_fraction=0.0, batch_size=4, cache_dir=str(tmp_path / "hf"),
                                tokenizer_dir=str(tmp_path / "tok"), **kwargs)


def test_tagged_corpus_gives_gold_word_starts(tmp_path):
    dm = tagged_dm(tmp_path)
    dm.prepare_data()
    dm.setup("fit")
    assert "/" not in "".join(dm.tokenizer.get_vocab())  # trained on the joined words, not on 'word/tag'
    row = dm.train_dataset[1]  # 中共中央 总书记 、 国家 主席 江 泽民 发表 １９９８年 新年 讲话 。
    text, _ = segment(PD_LINES[1], "tagged")
    enc = dm.tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True, truncation=True,
                       max_length=32)
    assert row["input_ids"] == enc["input_ids"]
    assert groups(text, row["word_starts"], enc["offset_mapping"], enc["special_tokens_mask"]) == [
        "中共中央", "总书记", "、", "国家", "主席", "江", "泽民", "发表", "１９９８年", "新年", "讲话", "。"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["word_starts"].shape == batch["input_ids"].shape


def test_segmentation_is_cached_with_the_tokenization(tmp_path):
    first = tagged_dm(tmp_path)
    first.prepare_data()
    first.setup("fit")
    files = {f["filename"] for f in first.train_dataset.cache_files}
    mtimes = {f: os.stat(f).st_mtime_ns for f in files}
    second = tagged_dm(tmp_path, train_tokenizer=None, tokenizer=str(tmp_path / "tok"))
    second.setup("fit")
    assert {f["filename"] for f in second.train_dataset.cache_files} == files  # found by fingerprint
    assert {f: os.stat(f).st_mtime_ns for f in files} == mtimes
    assert second.train_dataset[1]["word_starts"] == first.train_dataset[1]["word_starts"]


def test_chinese_corpus_without_segmenter_warns(tmp_path, zh_tokenizer):
    tok_dir = tmp_path / "tok"
    zh_tokenizer.save_pretrained(tok_dir)
    corpus = tmp_path / "raw.txt"
    corpus.write_text("\n".join(SENTENCES * 4) + "\n", encoding="utf-8")
    dm = TextCorpusDataModule(data_files=str(corpus), tokenizer=str(tok_dir), block_size=16, val_fraction=0.0,
                              cache_dir=str(tmp_path / "hf"))
    with pytest.warns(UserWarning, match=r"mostly Chinese and word_boundaries='tokenizer'.*masks characters"):
        dm.setup("fit")


def test_streaming_corpus_gets_the_same_word_starts(tmp_path, zh_tokenizer):
    tok_dir = tmp_path / "tok"
    zh_tokenizer.save_pretrained(tok_dir)
    corpus = write_tagged(tmp_path / "pd.txt")
    dm = TextCorpusDataModule(data_files=str(corpus), tokenizer=str(tok_dir), word_boundaries="tagged",
                              streaming=True, shuffle_buffer=0, packing=False, val_fraction=0.0, block_size=32,
                              batch_size=2)
    dm.setup("fit")
    rows = list(dm.train_dataset)
    expected = tokenize_texts(PD_LINES, dm.tokenizer, 32, True, "tagged")
    assert [r["word_starts"] for r in rows] == expected["word_starts"]
    assert [r["input_ids"] for r in rows] == expected["input_ids"]


def test_byte_level_bpe_tokens_spaces_and_tokens_across_a_word_boundary():
    bpe = train_tokenizer(["北京 大学 good film in 北京"] * 50, "bpe", vocab_size=300)
    # a byte-level token carries its leading space: " film" belongs to the word "film"
    text, spans = segment("good film in 北京", "jieba")
    enc = bpe(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    flags = word_starts_for_texts([text], [spans], bpe, max_length=None, add_special_tokens=True)[0]
    assert [g.strip() for g in groups(text, flags, enc["offset_mapping"], enc["special_tokens_mask"])] == [
        "good", "film", "in", "北京"]
    # the gold words cut 北京 in two, but BPE made it one token: the token stays with the word it starts in
    text, spans = segment("北/ns  京/ns", "tagged")
    enc = bpe(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    assert len(enc["input_ids"]) == 1  # 北京: one token
    assert word_starts_for_texts([text], [spans], bpe, max_length=None, add_special_tokens=True)[0] == [1]
