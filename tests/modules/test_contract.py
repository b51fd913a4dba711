"""The module / datamodule contract (lit_llm.modules.contract) and the options every module shares."""

from __future__ import annotations

import inspect
import json
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from lit_llm.datamodules import TextClassificationDataModule, TextCorpusDataModule, TokenClassificationDataModule
from lit_llm.modules import CausalLanguageModel, MaskedLanguageModel, SequenceClassifier, TokenClassifier
from lit_llm.modules.contract import (
    CorpusData,
    DataContract,
    LabelledData,
    TextClassificationData,
    read_datamodule,
)

SHARED_OPTIONS = ("optimizer", "lr_scheduler", "layer_decay", "gradient_checkpointing", "compile", "export_dir",
                  "export", "report_dir")


@pytest.mark.parametrize("module", [SequenceClassifier, TokenClassifier, MaskedLanguageModel, CausalLanguageModel])
def test_every_module_takes_the_same_options_with_the_same_defaults(module):
    params = inspect.signature(module.__init__).parameters
    missing = [name for name in SHARED_OPTIONS if name not in params]
    assert not missing, f"{module.__name__} lacks {missing}"
    defaults = {name: params[name].default for name in SHARED_OPTIONS}
    assert defaults == {"optimizer": torch.optim.AdamW, "lr_scheduler": None, "layer_decay": None,
                        "gradient_checkpointing": False, "compile": False, "export_dir": None, "export": True,
                        "report_dir": None}


@pytest.mark.parametrize("module", [SequenceClassifier, TokenClassifier, MaskedLanguageModel, CausalLanguageModel])
def test_every_module_refuses_the_same_bad_layer_decay(module, tiny_bert_dir):
    with pytest.raises(ValueError, match=rf"{module.__name__}\(layer_decay=1\.5\): must be in \(0, 1\]"):
        module(str(tiny_bert_dir), layer_decay=1.5)


def test_our_datamodules_satisfy_the_protocols(tiny_bert_dir, tmp_path):
    text = TextClassificationDataModule(str(tiny_bert_dir), train_file=str(tmp_path / "t.csv"), labels=["neg", "pos"])
    tokens = TokenClassificationDataModule(str(tiny_bert_dir), train_file=str(tmp_path / "t.conll"),
                                           labels=["O", "B-PER", "I-PER"])
    corpus = TextCorpusDataModule(tokenizer=str(tiny_bert_dir), data_files=str(tmp_path / "c.txt"))
    assert isinstance(text, TextClassificationData) and isinstance(text, LabelledData)
    assert isinstance(tokens, LabelledData) and not isinstance(tokens, TextClassificationData)
    assert isinstance(corpus, CorpusData) and not isinstance(corpus, LabelledData)


def _module_with(datamodule) -> pl.LightningModule:
    module = pl.LightningModule()
    module._trainer = SimpleNamespace(datamodule=datamodule)  # what Trainer.fit attaches
    return module


def test_read_datamodule_reads_a_users_plain_attributes():
    class UserData(pl.LightningDataModule):
        labels = ("ham", "spam")
        multi_label = 0  # any truthy / falsy value
        block_size = 64

    data = read_datamodule(_module_with(UserData()))
    assert data == DataContract(labels=["ham", "spam"], multi_label=False, block_size=64)
    assert data.require_labels("X") == ["ham", "spam"]


def test_read_datamodule_without_trainer_or_datamodule_is_empty():
    assert read_datamodule(pl.LightningModule()) == DataContract()
    assert read_datamodule(_module_with(None)) == DataContract()
    with pytest.raises(ValueError, match=r"X\(labels=None\) takes its labels from trainer\.datamodule\.labels"):
        DataContract().require_labels("X")


def test_a_labels_property_that_cannot_answer_is_kept_for_the_module_that_needs_it():
    class PredictOnly(pl.LightningDataModule):
        @property
        def labels(self):
            raise ValueError("no labelled split to infer the labels from; pass labels=[...]")

    data = read_datamodule(_module_with(PredictOnly()))
    assert data.labels is None and isinstance(data.labels_error, ValueError)
    with pytest.raises(ValueError, match="no labelled split"):
        data.require_labels("TokenClassifier")


def test_nsp_negatives_is_read_only_from_a_datamodule_that_builds_pairs():
    class Pairs(pl.LightningDataModule):
        nsp, nsp_negatives = True, "swapped"

    class NoPairs(pl.LightningDataModule):
        nsp, nsp_negatives = False, "swapped"

    assert read_datamodule(_module_with(Pairs())).nsp_negatives == "swapped"
    assert read_datamodule(_module_with(NoPairs())).nsp_negatives is None


def test_a_users_datamodule_with_plain_labels_trains_our_classifier(tiny_bert_dir, tiny_tokenizer, tmp_path):
    """The contract from the user's side: a LightningDataModule of their own, with a ``labels`` attribute."""

    class UserData(pl.LightningDataModule):
        labels = ["neg", "pos"]

        def train_dataloader(self):
            enc = tiny_tokenizer(["good film", "bad film"] * 4, padding=True, return_tensors="pt")
            rows = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
                     "labels": torch.tensor(i % 2)} for i in range(8)]
            return DataLoader(rows, batch_size=4)

    model = SequenceClassifier(str(tiny_bert_dir), export=False)
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=UserData())
    assert model.labels == ["neg", "pos"] and model.hparams["labels"] == ["neg", "pos"]
    assert model.model is not None and model.model.config.id2label == {0: "neg", 1: "pos"}


def test_language_models_write_their_test_report_under_report_dir(tiny_gpt2_dir, tiny_tokenizer, tmp_path):
    enc = tiny_tokenizer(["the cat sat on the mat", "a dog ran"] * 2, padding=True, return_tensors="pt")
    rows = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i]} for i in range(4)]
    model = CausalLanguageModel(str(tiny_gpt2_dir), report_dir=str(tmp_path / "my_reports"))
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    metrics = trainer.test(model, DataLoader(rows, batch_size=2))[0]
    report = json.loads((tmp_path / "my_reports" / "lm_report.json").read_text())
    assert model.report_path == tmp_path / "my_reports" / "lm_report.json"
    assert report["module"] == "CausalLanguageModel"
    assert report["loss"] == pytest.approx(metrics["test/loss"], rel=1e-5)
    assert report["perplexity"] == pytest.approx(metrics["test/perplexity"], rel=1e-5)
