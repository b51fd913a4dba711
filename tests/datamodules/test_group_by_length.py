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


def test_the_main_job_groups_its_training_batches_by_length():
    config = yaml.safe_load((Path(__file__).parents[2] / "configs/finetune/minilm_rotten_tomatoes.yaml").read_text())
    assert config["data"]["init_args"]["group_by_length"] is True
