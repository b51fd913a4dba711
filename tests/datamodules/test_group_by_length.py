"""``group_by_length``: training batches of similar lengths, so dynamic padding pads little."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml
from torch.utils.data import SequentialSampler

from lit_llm.datamodules import ResumableDataLoader, TextClassificationDataModule, TokenClassificationDataModule
from lit_llm.text.augmentation import TextAugmentation

WORDS = ["the", "movie", "film", "story", "was", "really", "very", "acting", "script", "good", "bad"]


@pytest.fixture()
def ragged_csv(tmp_path):
    rng = random.Random(0)
    path = tmp_path / "train.csv"
    rows = [f"{' '.join(rng.choices(WORDS, k=rng.randint(1, 40)))},{rng.choice(['fresh', 'rotten'])}"
            for _ in range(240)]
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture()
def ragged_conll(tmp_path):
    rng = random.Random(1)
    path = tmp_path / "train.conll"
    sentences = ["\n".join(f"{w}\t{'B-LOC' if w == 'film' else 'O'}" for w in rng.choices(WORDS, k=rng.randint(1, 30)))
                 for _ in range(120)]
    path.write_text("\n\n".join(sentences) + "\n")
    return path


def _epoch_batches(loader: ResumableDataLoader, epoch: int = 0) -> list[dict]:
    loader.sampler.set_epoch(epoch)
    return list(loader)


def _padding_share(batches: list[dict]) -> float:
    cells = sum(b["attention_mask"].numel() for b in batches)
    return 1 - sum(int(b["attention_mask"].sum()) for b in batches) / cells


def _text_dm(tokenizer, train, **kwargs):
    dm = TextClassificationDataModule(str(tokenizer), train_file=str(train), val_fraction=0.1, batch_size=8,
                                      max_length=64, seed=3, **kwargs)
    dm.setup("fit")
    return dm


def _token_dm(tokenizer, train, **kwargs):
    dm = TokenClassificationDataModule(str(tokenizer), train_file=str(train), validation_file=str(train),
                                       batch_size=8, max_length=64, seed=3, **kwargs)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("build, data", [(_text_dm, "ragged_csv"), (_token_dm, "ragged_conll")])
def test_grouped_training_batches_pad_far_less_and_still_see_every_example(tiny_tokenizer_dir, build, data, request):
    train = request.getfixturevalue(data)
    plain = build(tiny_tokenizer_dir, train).train_dataloader()
    grouped_dm = build(tiny_tokenizer_dir, train, group_by_length=True)
    grouped = grouped_dm.train_dataloader()
    assert isinstance(grouped, ResumableDataLoader)  # still resumes mid-epoch exactly
    assert _padding_share(_epoch_batches(grouped)) < _padding_share(_epoch_batches(plain)) / 4
    n_train = len(grouped_dm.datasets["train"])
    assert sorted(i for i in grouped.sampler) == list(range(n_train))
    # Validation keeps the file's order: predictions line up with its rows.
    assert isinstance(grouped_dm.val_dataloader().sampler, SequentialSampler)


def test_the_augmented_training_loader_is_grouped_by_the_lengths_before_the_edits(tiny_tokenizer_dir, ragged_csv):
    dm = _text_dm(tiny_tokenizer_dir, ragged_csv, group_by_length=True,
                  augmentation=TextAugmentation(ops=["swap"], p=0.5, rate=0.1))
    loader = dm.train_dataloader()
    lengths = [len(ids) for ids in dm.datasets["train"]["input_ids"]]
    assert loader.sampler.lengths == lengths
    assert _padding_share(_epoch_batches(loader)) < 0.1


FAST_CONFIGS = ("configs/finetune/minilm_rotten_tomatoes.yaml", "configs/finetune/minilm_wnut16.yaml")


@pytest.mark.parametrize("path", FAST_CONFIGS)
def test_the_main_job_and_ner_group_their_training_batches_by_length_in_the_fastest_precision(path):
    config = yaml.safe_load((Path(__file__).parents[2] / path).read_text())
    assert config["data"]["init_args"]["group_by_length"] is True
    assert config["fastest_precision"] is True


# ---------------------------------------------------------------- sort_eval_by_length
@pytest.mark.parametrize("build, data", [(_text_dm, "ragged_csv"), (_token_dm, "ragged_conll")])
def test_sorted_evaluation_batches_pad_far_less_and_hold_every_example_once(tiny_tokenizer_dir, build, data, request):
    train = request.getfixturevalue(data)
    # the whole ragged file as validation (the token datamodule's helper already takes it so)
    extra = {"validation_file": str(train)} if build is _text_dm else {}
    plain = build(tiny_tokenizer_dir, train, **extra)
    dm = build(tiny_tokenizer_dir, train, sort_eval_by_length=True, **extra)
    sorted_batches, file_batches = list(dm.val_dataloader()), list(plain.val_dataloader())
    assert _padding_share(sorted_batches) < _padding_share(file_batches) / 4
    lengths = [int(m.sum()) for b in sorted_batches for m in b["attention_mask"]]
    assert lengths == sorted(lengths)  # shortest first
    ids = lambda batches: sorted(tuple(x[m.bool()].tolist()) for b in batches  # noqa: E731
                                 for x, m in zip(b["input_ids"], b["attention_mask"], strict=True))
    assert ids(sorted_batches) == ids(file_batches)  # the same examples, each once
    # the labels travel with their examples (a tagger's, padded per batch, compared on the real tokens)
    real = lambda y, m: y[m.bool()] if y.ndim else y  # noqa: E731
    pairs = lambda batches: sorted((tuple(x[m.bool()].tolist()), str(real(y, m).tolist()))  # noqa: E731
                                   for b in batches for x, m, y in zip(b["input_ids"], b["attention_mask"],
                                                                       b["labels"], strict=True))
    assert pairs(sorted_batches) == pairs(file_batches)


@pytest.mark.parametrize("build, data", [(_text_dm, "ragged_csv"), (_token_dm, "ragged_conll")])
def test_the_test_split_is_sorted_too_and_in_the_files_order_without_the_option(tiny_tokenizer_dir, build, data,
                                                                                 request):
    train = request.getfixturevalue(data)
    lengths = {}
    for sort in (False, True):
        dm = build(tiny_tokenizer_dir, train, test_file=str(train), sort_eval_by_length=sort)
        dm.setup("test")
        lengths[sort] = [int(m.sum()) for b in dm.test_dataloader() for m in b["attention_mask"]]
    assert lengths[False] != sorted(lengths[False])  # the file is ragged: its own order is not sorted
    assert lengths[True] == sorted(lengths[False])


def test_predict_keeps_the_files_order_when_evaluation_is_sorted(tiny_tokenizer_dir, ragged_csv, tmp_path):
    predict = tmp_path / "predict.csv"
    predict.write_text(ragged_csv.read_text())
    dm = TextClassificationDataModule(str(tiny_tokenizer_dir), predict_file=str(predict), batch_size=8,
                                      sort_eval_by_length=True)
    dm.setup("predict")
    texts = [t for b in dm.predict_dataloader() for t in b["text"]]
    assert texts == [line.rsplit(",", 1)[0] for line in ragged_csv.read_text().splitlines()[1:]]


@pytest.mark.parametrize("build, data, task", [(_text_dm, "ragged_csv", "sequence"),
                                               (_token_dm, "ragged_conll", "token")])
def test_validation_metrics_are_the_same_in_sorted_and_file_order(tiny_tokenizer_dir, tiny_bert_dir, build, data, task,
                                                                  request):
    import lightning.pytorch as pl

    from lit_llm.modules import SequenceClassifier, TokenClassifier

    train = request.getfixturevalue(data)
    module = SequenceClassifier if task == "sequence" else TokenClassifier
    results = []
    for sort in (False, True):
        dm = build(tiny_tokenizer_dir, train, sort_eval_by_length=sort)
        model = module(str(tiny_bert_dir), tokenizer=str(tiny_tokenizer_dir), export=False)
        trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                             enable_checkpointing=False)
        pl.seed_everything(0)
        results.append(trainer.validate(model, datamodule=dm, verbose=False)[0])
    assert results[0].keys() == results[1].keys() and "val/loss" in results[0]  # the loss too: a mean over the split
    for key in results[0]:
        assert results[1][key] == pytest.approx(results[0][key], abs=1e-5), key


@pytest.mark.parametrize("path", FAST_CONFIGS)
def test_the_main_job_and_ner_sort_their_evaluation_batches_by_length(path):
    config = yaml.safe_load((Path(__file__).parents[2] / path).read_text())
    assert config["data"]["init_args"]["sort_eval_by_length"] is True


def test_the_hf_trainers_group_by_length_also_reorders_evaluation_rows_which_the_readme_warns_of(tmp_path):
    """README (NER): in transformers 5 the HF Trainer's ``train_sampling_strategy="group_by_length"`` also
    shuffles the evaluation batches by length, so ``predictions[i]`` is not row ``i``; lit-llm's predict keeps the
    file's order (tested above)."""
    pytest.importorskip("accelerate")
    from transformers import BertConfig, BertForTokenClassification, Trainer, TrainingArguments

    model = BertForTokenClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                  num_attention_heads=2, intermediate_size=32, num_labels=3))
    rows = [{"input_ids": [1] * (1 + (7 * i) % 23), "labels": [0] * (1 + (7 * i) % 23)} for i in range(64)]
    args = TrainingArguments(output_dir=str(tmp_path), train_sampling_strategy="group_by_length", use_cpu=True,
                             report_to=[], per_device_eval_batch_size=4)
    order = list(Trainer(model=model, args=args)._get_eval_sampler(rows))
    assert sorted(order) == list(range(64)) and order != list(range(64))
