"""The augmentation core: token edits that keep labels and tag alignment, lexicons, masked-LM replacement, config."""

from __future__ import annotations

import json
import random

import pytest

from lit_llm.text.entities import extract_entities
from lit_llm.errors import InvalidArgumentError, UserInputError
from lit_llm.text.augmentation import (
    Augmenter,
    MaskedLMFiller,
    TextAugmentation,
    contextual_replacement,
    example_rng,
    load_lexicon,
    random_deletion,
    random_insertion,
    random_swap,
    synonym_replacement,
    training_vocabulary,
)

WORDS = "john smith said the new york film was not very good at all".split()
TAGS = ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "O", "O", "O", "O", "O", "O", "O"]
LEXICON = {"good": ["fine", "decent"], "film": ["movie"], "said": ["stated"], "john": ["jack"], "new": ["fresh"]}


def _entity_words(words, tags):
    return sorted((e.type, tuple(words[e.start : e.end])) for e in extract_entities(tags, "BIO", "strict"))


def _all_ops(words, tags, rng, fill):
    protect = frozenset({"not"})
    yield random_swap(words, 3, rng, tags, protect)
    yield random_deletion(words, 3, rng, tags, protect)
    yield random_insertion(words, 3, rng, ["movie", "plot"], tags)
    yield synonym_replacement(words, 3, rng, LEXICON, tags, protect)
    yield contextual_replacement(words, 3, rng, fill, tags, protect)


def test_edits_with_tags_keep_every_entity_and_the_alignment():
    fill = lambda words, positions: [["thing"] for _ in positions]  # noqa: E731
    changed = 0
    for seed in range(200):
        for words, tags in _all_ops(WORDS, TAGS, random.Random(seed), fill):
            assert len(words) == len(tags)
            assert _entity_words(words, tags) == _entity_words(WORDS, TAGS)  # same entities, same words
            assert extract_entities(tags, "BIO", "strict") == extract_entities(tags, "BIO", "default")  # well formed
            assert "not" in words
            changed += words != WORDS
    assert changed > 900  # nearly every edit changed something (a few swap equal words or find no place)


def test_swap_with_tags_only_exchanges_words_of_the_same_tag():
    for seed in range(50):
        words, tags = random_swap(WORDS, 4, random.Random(seed), TAGS)
        assert tags == TAGS
        assert sorted(words[i] for i, t in enumerate(TAGS) if t == "O") == sorted(
            WORDS[i] for i, t in enumerate(TAGS) if t == "O"
        )


def test_edits_without_tags_never_touch_protected_words_and_keep_one_word():
    protect = frozenset({"not"})
    fill = lambda words, positions: [["thing"] for _ in positions]  # noqa: E731
    for seed in range(100):
        for words, tags in _all_ops(WORDS, None, random.Random(seed), fill):
            assert tags is None and "not" in words
    assert random_deletion(["one"], 5, random.Random(0), protect=protect)[0] == ["one"]
    assert random_deletion(["not", "good"], 5, random.Random(0), protect=protect)[0] == ["not"]


def test_example_rng_depends_only_on_seed_epoch_and_index():
    draws = [example_rng(13, 1, 7).random() for _ in range(2)]
    assert draws[0] == draws[1]
    others = {example_rng(13, 2, 7).random(), example_rng(13, 1, 8).random(), example_rng(14, 1, 7).random()}
    assert draws[0] not in others and len(others) == 3


def test_augmenter_probability_and_rate():
    never = Augmenter(TextAugmentation(p=0.0), ["movie"])
    assert all(never.text("a good film", example_rng(0, 0, i)) is None for i in range(50))
    always = Augmenter(TextAugmentation(ops=["delete"], p=1.0, rate=0.5), ["movie"])
    out = [always.text("one two three four", example_rng(0, 0, i)) for i in range(50)]
    assert all(len(text.split()) == 2 for text in out)  # half of 4 words deleted, every time
    half = Augmenter(TextAugmentation(ops=["swap"], p=0.5), ["movie"])
    edited = sum(half.text("one two three four", example_rng(0, 0, i)) is not None for i in range(400))
    assert 160 < edited < 240


def test_training_vocabulary_is_sorted_frequent_and_unprotected():
    assert training_vocabulary(["not a good film", "not a bad film", "good"]) == ["a", "film", "good"]


def test_config_collects_every_problem():
    with pytest.raises(InvalidArgumentError, match=(
        r"ops=\['swap', 'shuffle'\]: choose one or more of swap, delete, insert, synonym, contextual; "
        r"p=1.5: must be in \[0, 1\].*; rate=0.0: must be in \(0, 1\]"
    )):
        TextAugmentation(ops=["swap", "shuffle"], p=1.5, rate=0.0)
    with pytest.raises(InvalidArgumentError, match=r"op 'synonym' needs lexicon.*op 'contextual' needs mlm"):
        TextAugmentation(ops=["synonym", "contextual"])
    with pytest.raises(InvalidArgumentError, match=r"top_k=0: must be >= 1"):
        TextAugmentation(top_k=0)


def test_augmenting_validation_data_is_an_error():
    with pytest.raises(InvalidArgumentError, match=(
        r"splits=\['train', 'validation'\]: augmentation applies to training batches only; validation and test "
        r"must measure the data as it is. Use splits: \[train\]"
    )):
        TextAugmentation(splits=["train", "validation"])


def test_lexicon_files(tmp_path):
    tsv = tmp_path / "syn.tsv"
    tsv.write_text("# word, then its synonyms\nGood\tfine\tdecent\nfilm\tmovie\n")
    assert load_lexicon(str(tsv)) == {"good": ["fine", "decent"], "film": ["movie"]}
    as_json = tmp_path / "syn.json"
    as_json.write_text(json.dumps({"good": ["fine", "good"]}))
    assert load_lexicon(str(as_json)) == {"good": ["fine"]}
    words, _ = synonym_replacement(["a", "good", "film"], 2, random.Random(0), load_lexicon(str(tsv)))
    assert words[0] == "a" and words[1] in ("fine", "decent") and words[2] == "movie"


def test_bad_lexicons(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("good\tfine\nlonely\n")
    with pytest.raises(UserInputError, match=r"bad.tsv: line 2: expected word<TAB>synonym.*, got 'lonely'"):
        load_lexicon(str(bad))
    bad_json = tmp_path / "bad.json"
    bad_json.write_text(json.dumps({"good": "fine"}))
    with pytest.raises(UserInputError, match=r"key 'good': expected a list of synonym strings, got 'fine'"):
        load_lexicon(str(bad_json))
    bad_json.write_text("[1]")
    with pytest.raises(UserInputError, match=r"expected a JSON object of word -> list of synonyms, got a list"):
        load_lexicon(str(bad_json))
    with pytest.raises(FileNotFoundError, match=r"augmentation lexicon '.*nothing.tsv' does not exist"):
        load_lexicon(str(tmp_path / "nothing.tsv"))


def test_wordnet_without_nltk_says_how_to_install():
    try:
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
        pytest.skip("WordNet is installed here")
    except (ImportError, LookupError):
        pass
    with pytest.raises(InvalidArgumentError, match=r"needs nltk and its WordNet data .*pip install nltk"):
        load_lexicon("wordnet")


def test_contextual_replacement_with_a_tiny_masked_lm(tiny_bert_dir):
    # tiny_bert_dir is a BertForMaskedLM saved with its tokenizer, as a MaskedLanguageModel export is.
    fill = MaskedLMFiller(str(tiny_bert_dir), top_k=5)
    words = "the movie was really good".split()
    [candidates] = fill(words, [4])
    assert len(candidates) == 5 and all(c.isalpha() and c != "good" for c in candidates)
    vocab = set(fill.tokenizer.get_vocab())
    assert all(c in vocab for c in candidates)  # whole words of its vocabulary, no ##pieces
    first = contextual_replacement(words, 2, random.Random(3), fill)
    assert first == contextual_replacement(words, 2, random.Random(3), fill)  # seeded: the same edit
    assert sum(a != b for a, b in zip(first[0], words)) == 2
    aug = Augmenter(TextAugmentation(ops=["contextual"], p=1.0, mlm=str(tiny_bert_dir), rate=0.4))
    assert aug.text("the movie was really good", example_rng(0, 0, 0)) != "the movie was really good"


def test_a_model_without_masked_lm_head_is_refused(tmp_path, tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2).save_pretrained(tmp_path / "clf")
    with pytest.raises(InvalidArgumentError, match=r"has no masked-LM head \(architectures: \['BertForSequenceClass"):
        MaskedLMFiller(str(tmp_path / "clf"))
