"""Augmentation in the datamodules: training batches only, seeded, replayed identically by an exact resume,
labels kept (sequence classification) and tag alignment kept (token classification)."""

from __future__ import annotations

import random

import pytest
import torch

from lit_llm.datamodules import TextClassificationDataModule, TokenClassificationDataModule
from lit_llm.text.entities import extract_entities
from lit_llm.errors import InvalidArgumentError
from lit_llm.text.augmentation import TextAugmentation
from tests.test_resume import _crash_resume_and_compare, dropout_bert_dir  # noqa: F401 - a fixture

AUGMENT = TextAugmentation(ops=["swap", "delete", "insert"], p=1.0, rate=0.3)


def _text_dm(tok, csvs, augmentation=AUGMENT, **kwargs):
    return TextClassificationDataModule(str(tok), train_file=str(csvs["train"]), validation_file=str(csvs["val"]),
                                        batch_size=16, augmentation=augmentation, seed=5, **kwargs)


def _epoch(dm, epoch, state=None):
    dm.setup("fit")
    loader = dm.train_dataloader()
    if state is not None:
        loader.load_state_dict(state)
    loader.sampler.set_epoch(epoch)  # as Lightning does at each epoch start
    return list(loader)


def _same(a, b):
    return len(a) == len(b) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b))


def test_augmented_epoch_replays_exactly_on_resume(tiny_tokenizer_dir, sentiment_csvs):
    full = _epoch(_text_dm(tiny_tokenizer_dir, sentiment_csvs), 1)
    resumed = _epoch(_text_dm(tiny_tokenizer_dir, sentiment_csvs), 1, {"epoch": 1, "batches": 2})
    assert _same(resumed, full[2:])  # a fresh process skipping 2 batches gets the same augmented rest
    assert not _same(_epoch(_text_dm(tiny_tokenizer_dir, sentiment_csvs), 2), full)  # new edits each epoch
    assert _same(_epoch(_text_dm(tiny_tokenizer_dir, sentiment_csvs), 1), full)  # seeded


def test_augmentation_edits_training_texts_and_keeps_labels(tiny_tokenizer_dir, sentiment_csvs):
    plain, augmented = (_text_dm(tiny_tokenizer_dir, sentiment_csvs, augmentation=a) for a in (None, AUGMENT))
    plain_batches, augmented_batches = _epoch(plain, 0), _epoch(augmented, 0)
    # Same order (same seed), same labels; the inputs differ.
    assert [b["labels"].tolist() for b in plain_batches] == [b["labels"].tolist() for b in augmented_batches]
    assert not _same(plain_batches, augmented_batches)
    # Validation is never augmented.
    assert _same(list(plain.val_dataloader()), list(augmented.val_dataloader()))


def test_augmentation_with_a_carved_validation_split_and_pairs(tiny_tokenizer_dir, tmp_path):
    path = tmp_path / "pairs.csv"
    rng = random.Random(0)
    path.write_text("a,b,label\n" + "".join(
        f"the movie was {rng.choice(['good', 'bad'])} and fun,the story was very dull,{rng.choice(['x', 'y'])}\n"
        for _ in range(40)
    ))
    dm = TextClassificationDataModule(str(tiny_tokenizer_dir), train_file=str(path), text_field="a",
                                      text_pair_field="b", batch_size=8, augmentation=AUGMENT)
    batches = _epoch(dm, 0)
    assert sum(len(b["labels"]) for b in batches) == 36 and "token_type_ids" in batches[0]
    assert set(next(iter(dm.val_dataloader()))) == {"input_ids", "token_type_ids", "attention_mask", "labels"}


def test_augmenting_validation_data_is_refused_by_the_datamodule_config(tiny_tokenizer_dir, sentiment_csvs):
    with pytest.raises(InvalidArgumentError, match=r"augmentation applies to training batches only"):
        _text_dm(tiny_tokenizer_dir, sentiment_csvs, augmentation=TextAugmentation(splits=["validation"]))


# ---------------------------------------------------------------- token classification
PEOPLE, PLACES = ["john", "mary"], [["new", "york"], ["london"], ["paris"]]


@pytest.fixture()
def tagged_file(tmp_path):
    rng = random.Random(0)
    lines = []
    for _ in range(24):
        person, place = rng.choice(PEOPLE), rng.choice(PLACES)
        words = [(person, "B-PER"), ("loved", "O"), ("the", "O"), ("film", "O"), ("in", "O")]
        words += [(w, "B-LOC" if k == 0 else "I-LOC") for k, w in enumerate(place)]
        words += [("it", "O"), ("was", "O"), ("not", "O"), ("bad", "O")]
        lines += [f"{w}\t{t}" for w, t in words] + [""]
    path = tmp_path / "train.conll"
    path.write_text("\n".join(lines) + "\n")
    return path


def _words_and_tags(batch, row, tokenizer, labels):
    """Per word of one example: its text (sub-tokens joined) and its tag (that of its first sub-token)."""
    ids, word_ids, tags = batch["input_ids"][row], batch["word_ids"][row], batch["labels"][row]
    words: dict[int, list[int]] = {}
    first: dict[int, str] = {}
    for token_id, w, t in zip(ids.tolist(), word_ids.tolist(), tags.tolist()):
        if w < 0:
            continue
        words.setdefault(w, []).append(token_id)
        if w not in first:
            first[w] = labels[t]
    texts = [tokenizer.decode(words[w]).replace(" ##", "").replace(" ", "") for w in sorted(words)]
    return texts, [first[w] for w in sorted(words)]


def test_token_classification_augmentation_keeps_entities_and_replays(tiny_tokenizer_dir, tagged_file):
    def dm():
        return TokenClassificationDataModule(str(tiny_tokenizer_dir), train_file=str(tagged_file), batch_size=6,
                                             augmentation=AUGMENT, seed=3)

    module = dm()
    batches = _epoch(module, 0)
    changed = 0
    for batch in batches:
        for row in range(len(batch["input_ids"])):
            words, tags = _words_and_tags(batch, row, module.tokenizer, module.labels)
            entities = sorted((e.type, " ".join(words[e.start:e.end])) for e in extract_entities(tags, "BIO", "strict"))
            assert [t for t, _ in entities] == ["LOC", "PER"]  # each sentence keeps one person and one place
            assert entities[0][1] in {" ".join(p) for p in PLACES} and entities[1][1] in PEOPLE
            assert "not" in words
            changed += len(words) != 10 or words[1:5] != ["loved", "the", "film", "in"]
    assert changed >= 12  # most sentences were edited (p=1; a swap of equal words can leave one as it was)
    assert _same(_epoch(dm(), 0, {"epoch": 0, "batches": 1}), batches[1:])


@pytest.mark.slow
def test_cli_fit_with_augmentation_killed_mid_epoch_resumes_bitwise(tmp_path, dropout_bert_dir, sentiment_csvs):  # noqa: F811
    # The journey: augmentation from YAML through `lit-llm fit`, SIGKILL in epoch 1, `--ckpt_path last`: the same
    # weights and optimizer state, bit for bit, as the run never interrupted (dropout on: RNG restored too).
    model = {"class_path": "lit_llm.modules.SequenceClassifier",
             "init_args": {"model": str(dropout_bert_dir),
                           "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 3e-3}}}}
    data = {"class_path": "lit_llm.datamodules.TextClassificationDataModule",
            "init_args": {"tokenizer": str(dropout_bert_dir), "train_file": str(sentiment_csvs["train"]),
                          "validation_file": str(sentiment_csvs["val"]), "batch_size": 8,
                          "augmentation": {"ops": ["swap", "delete", "insert"], "p": 1.0, "rate": 0.3}}}
    _crash_resume_and_compare(tmp_path, model, data, global_batch=16, max_steps=14, kill_at=9)
