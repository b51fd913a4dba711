"""Bad inputs a user can give lit-llm, and the errors they get: the tests behind docs/bad_inputs.md.

Most rows of the catalogue point at the test next to the feature; this file holds the bad inputs that had no test
yet (checkpoints given to ``lit-llm export`` or to a resume, distillation teachers that do not fit the student,
CLI configs with unknown keys, ...), the ``xfail`` tests that pin messages still to be made clear, and
``test_catalogue_is_true``, which checks every row of the catalogue against the code and the tests.
"""

from __future__ import annotations

import ast
import builtins
import json
import pickle
import re
import struct
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_llm.training.checkpointing import AtomicCheckpointIO
from lit_llm.datamodules.files import DataFileError

REPO = Path(__file__).resolve().parents[1]
CATALOGUE = REPO / "docs" / "bad_inputs.md"
PACKAGE = REPO / "lit_llm"


# ---------------------------------------------------------------------------------------------------- helpers
class _Payload:
    """Unpickling this object would write a marker file: proof that a loader ran code from the checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code from the checkpoint ran"))


class _Tiny(pl.LightningModule):
    """A plain user LightningModule (no HF model), for the Trainer-level checks."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.zeros(4, 2)), batch_size=2)


def _trainer(tmp_path: Path, callbacks=(), **kwargs) -> pl.Trainer:
    options = dict(
        accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
    )
    options.update(kwargs)
    return pl.Trainer(callbacks=list(callbacks), **options)


def _truncated_checkpoint(tmp_path: Path) -> Path:
    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {"layer.weight": torch.zeros(1, 2)}, "pytorch-lightning_version": "2.5.0"}, whole)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(whole.read_bytes()[:200])  # what a kill during torch.save leaves behind
    return cut


def _pickle_of_objects(tmp_path: Path, how: str) -> tuple[Path, Path]:
    """A checkpoint file that holds an arbitrary object; returns (file, marker the object writes if unpickled)."""
    marker = tmp_path / "payload_ran"
    path = tmp_path / f"objects_{how}.ckpt"
    content = {"state_dict": {"layer.weight": torch.zeros(1, 2)}, "extra": _Payload(marker)}
    if how == "torch_save":
        torch.save(content, path)
    else:  # a bare pickle, not torch's zip format
        path.write_bytes(pickle.dumps(content))
    return path, marker


# ---------------------------------------------------------------------------------------------------- export
def test_export_cli_on_a_truncated_checkpoint(tmp_path, capsys):
    from lit_llm.cli import main

    assert main(["export", str(_truncated_checkpoint(tmp_path)), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "cut.ckpt is not a readable checkpoint" in err and "It may be truncated" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_export_cli_on_a_missing_checkpoint(tmp_path, capsys):
    from lit_llm.cli import main

    assert main(["export", str(tmp_path / "nope.ckpt"), str(tmp_path / "out")]) == 2
    assert "nope.ckpt' does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("how", ["torch_save", "bare_pickle"])
def test_export_refuses_a_pickle_of_arbitrary_objects(tmp_path, how):
    from lit_llm.commands.export import CheckpointError, load_checkpoint

    path, marker = _pickle_of_objects(tmp_path, how)
    with pytest.raises(CheckpointError, match=r"is not a readable checkpoint .*lit-llm loads with weights_only=True"):
        load_checkpoint(path)
    assert not marker.exists(), "loading the checkpoint ran code from it"


def test_export_directory_that_is_not_a_sharded_checkpoint(tmp_path):
    from lit_llm.commands.export import CheckpointError, load_checkpoint

    (tmp_path / "ckpts").mkdir()
    with pytest.raises(CheckpointError, match=r"ckpts is a directory but not a distributed checkpoint"):
        load_checkpoint(tmp_path / "ckpts")


def test_export_checkpoint_of_no_known_module(tmp_path):
    from lit_llm.commands.export import CheckpointError, export_checkpoint

    path = tmp_path / "user.ckpt"
    torch.save({"state_dict": {"layer.weight": torch.zeros(1, 2)}, "hyper_parameters": {}}, path)
    message = r"user.ckpt does not say which LightningModule wrote it .*; pass --module"
    with pytest.raises(CheckpointError, match=message):
        export_checkpoint(path, tmp_path / "out")


def test_onnx_export_without_the_onnx_package(tmp_path, monkeypatch):
    from lit_llm.commands.export import export_onnx

    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"ONNX export needs the onnx package: pip install onnx"):
        export_onnx(nn.Linear(2, 2), tmp_path / "model.onnx")


def test_export_of_a_pickle_of_objects_names_what_it_refused(tmp_path):
    from lit_llm.commands.export import CheckpointError, load_checkpoint

    path, _ = _pickle_of_objects(tmp_path, "torch_save")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\x1b[" not in message and "two options" not in message
    assert "unsafe globals" in message and "pathlib.Path" in message  # what it would have had to unpickle


# ---------------------------------------------------------------------------------------------------- resume
def test_resume_never_runs_code_from_a_checkpoint(tmp_path):
    path, marker = _pickle_of_objects(tmp_path, "torch_save")
    model = _Tiny()
    before = model.layer.weight.detach().clone()
    with pytest.raises(Exception):  # noqa: B017 - the message is pinned by the xfail test below
        _trainer(tmp_path, plugins=[AtomicCheckpointIO()]).fit(model, _loader(), ckpt_path=str(path))
    assert not marker.exists(), "resuming ran code from the checkpoint"
    assert torch.equal(before, model.layer.weight)


def test_resume_from_a_truncated_checkpoint_names_the_file(tmp_path):
    with pytest.raises(Exception) as info:  # noqa: B017 - any type, as long as the message helps
        _trainer(tmp_path, plugins=[AtomicCheckpointIO()]).fit(
            _Tiny(), _loader(), ckpt_path=str(_truncated_checkpoint(tmp_path))
        )
    assert "cut.ckpt" in str(info.value) and "truncated" in str(info.value)


def test_resume_from_a_pickle_of_objects_gives_no_unsafe_advice(tmp_path):
    path, _ = _pickle_of_objects(tmp_path, "torch_save")
    with pytest.raises(Exception) as info:  # noqa: B017
        _trainer(tmp_path, plugins=[AtomicCheckpointIO()]).fit(_Tiny(), _loader(), ckpt_path=str(path))
    message = str(info.value)
    assert "objects_torch_save.ckpt" in message
    assert "weights_only` set to `False" not in message


def test_resume_from_a_file_that_is_not_a_lightning_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(Exception) as info:  # noqa: B017
        _trainer(tmp_path, plugins=[AtomicCheckpointIO()]).fit(_Tiny(), _loader(), ckpt_path=str(path))
    assert not isinstance(info.value, KeyError)
    assert "weights.pt" in str(info.value) and "not a Lightning checkpoint" in str(info.value)


def test_atomic_checkpoint_io_refuses_storage_options(tmp_path):
    with pytest.raises(TypeError, match=r"AtomicCheckpointIO: storage_options=\{'x': 1\} is not supported"):
        AtomicCheckpointIO().save_checkpoint({}, tmp_path / "a.ckpt", storage_options={"x": 1})


# ---------------------------------------------------------------------------------------------------- distillation
def _student(tiny_bert_dir: Path, labels=("fresh", "rotten")):
    from lit_llm.modules import SequenceClassifier

    return SequenceClassifier(str(tiny_bert_dir), labels=list(labels), export=False)


def _teacher_ckpt(tmp_path: Path, tiny_bert_dir: Path, hparams: dict, **config) -> Path:
    """A Lightning-style checkpoint of a lit-llm SequenceClassifier (weights under ``model.``)."""
    from transformers import AutoConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(AutoConfig.from_pretrained(tiny_bert_dir, num_labels=2, **config))
    path = tmp_path / "teacher.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "hyper_parameters": hparams},
               path)
    return path


def _batches(n_vocab: int = 20) -> list[dict[str, torch.Tensor]]:
    ids = torch.randint(5, n_vocab, (2, 6))
    return [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1])}]


@pytest.mark.parametrize("teacher_labels", [["neg", "pos"], ["rotten", "fresh"]], ids=["other_names", "other_order"])
def test_teacher_checkpoint_with_another_label_set(tmp_path, tiny_bert_dir, teacher_labels):
    from lit_llm.callbacks import DistillationTeacher

    ckpt = _teacher_ckpt(tmp_path, tiny_bert_dir, {"model": str(tiny_bert_dir), "labels": teacher_labels})
    student = _student(tiny_bert_dir)
    with pytest.raises(ValueError, match=r"teacher labels .* differ from the student's .*same label set"):
        _trainer(tmp_path, [DistillationTeacher(teacher=str(ckpt))]).fit(student, _batches())
    assert student.trainer.global_step == 0


def test_teacher_with_another_vocabulary(tmp_path, tiny_bert_dir):
    from transformers import AutoConfig, BertForSequenceClassification

    from lit_llm.callbacks import DistillationTeacher

    config = AutoConfig.from_pretrained(tiny_bert_dir, vocab_size=500, id2label={0: "fresh", 1: "rotten"})
    BertForSequenceClassification(config).save_pretrained(tmp_path / "teacher")
    cb = DistillationTeacher(teacher=str(tmp_path / "teacher"))
    with pytest.raises(ValueError, match=r"has vocab_size 500, the student \d+; distillation needs the same tokenizer"):
        _trainer(tmp_path, [cb]).fit(_student(tiny_bert_dir), _batches())


def test_teacher_checkpoint_with_resized_embeddings(tmp_path, tiny_bert_dir):
    from lit_llm.callbacks import DistillationTeacher

    ckpt = _teacher_ckpt(tmp_path, tiny_bert_dir, {"model": str(tiny_bert_dir), "labels": ["fresh", "rotten"]},
                         vocab_size=500)  # trained after resize_token_embeddings; hparams name the base model
    with pytest.raises(ValueError, match=r"teacher\.ckpt.* does not match the architecture"):
        _trainer(tmp_path, [DistillationTeacher(teacher=str(ckpt))]).fit(_student(tiny_bert_dir), _batches())


def test_teacher_checkpoint_without_its_architecture(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from lit_llm.callbacks.distillation import load_teacher

    path = tmp_path / "bare.ckpt"
    torch.save({"state_dict": {"model.classifier.weight": torch.zeros(2, 4)}}, path)
    with pytest.raises(ValueError, match=r"does not say which architecture it holds .*teacher_architecture="):
        load_teacher(str(path), AutoModelForSequenceClassification)


def test_teacher_checkpoint_of_another_architecture(tmp_path, tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification

    from lit_llm.callbacks.distillation import load_teacher

    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"model.encoder.h.0.weight": torch.zeros(2, 2)},
                "hyper_parameters": {"model": str(tiny_bert_dir)}}, path)
    with pytest.raises(ValueError, match=r"does not match the architecture .* unexpected keys"):
        load_teacher(str(path), AutoModelForSequenceClassification)


def test_student_attribute_that_does_not_exist(tmp_path, tiny_bert_dir):
    from lit_llm.callbacks import DistillationTeacher

    cb = DistillationTeacher(teacher=str(tiny_bert_dir), student_attr="net")
    with pytest.raises(ValueError, match=r"has no attribute 'net' holding the HF student model; set student_attr="):
        _trainer(tmp_path, [cb]).fit(_student(tiny_bert_dir), _batches())


def test_layer_selection_on_a_model_without_blocks():
    from lit_llm.hf import find_blocks

    with pytest.raises(ValueError, match=r"Linear has no ModuleList of transformer blocks named layer"):
        find_blocks(nn.Linear(2, 2))


def test_teacher_with_another_head_is_named(tmp_path, tiny_bert_dir):
    from lit_llm.callbacks import DistillationTeacher

    with pytest.raises(ValueError) as info:  # tiny_bert_dir holds a BertForMaskedLM
        _trainer(tmp_path, [DistillationTeacher(teacher=str(tiny_bert_dir))]).fit(_student(tiny_bert_dir), _batches())
    assert "BertForMaskedLM" in str(info.value)


# ---------------------------------------------------------------------------------------------------- data files
def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("name", "content", "error", "match"),
    [
        ("missing.conll", None, FileNotFoundError, r"CoNLL file '.*missing\.conll' does not exist \(resolved from"),
        ("missing.json", None, FileNotFoundError, r"JSON file '.*missing\.json' does not exist \(resolved from"),
        ("dict.json", '{"tokens": ["a"], "tags": ["O"]}', DataFileError,
         r"dict\.json: expected a JSON list of \{tokens, tags\} objects, got dict"),
        ("broken.json", '[{"tokens": ["a"],', DataFileError, r"broken\.json: line 1: not valid JSON"),
        ("ints.jsonl", '{"tokens": [1, 2], "tags": ["O", "O"]}\n', DataFileError,
         r"ints\.jsonl: line 1: 'tokens' must be a list of strings, got \[1, 2\]"),
        ("empty.json", "[]", DataFileError, r"empty\.json: no sentences found\."),
    ],
)
def test_tagged_file_errors(tmp_path, name, content, error, match):
    from lit_llm.datamodules.conll import read_tagged

    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(error, match=match):
        read_tagged(path)


def _text_dm(tok, **kwargs):
    from lit_llm.datamodules import TextClassificationDataModule

    kwargs.setdefault("batch_size", 4)
    return TextClassificationDataModule(str(tok), **kwargs)


def test_text_that_is_not_a_string(tmp_path, tiny_tokenizer_dir):
    path = _write(tmp_path / "nums.jsonl", '{"text": "good", "label": "p"}\n{"text": 42, "label": "n"}\n')
    with pytest.raises(DataFileError, match=r"nums\.jsonl: line 2: 'text' is int 42, not text"):
        _text_dm(tiny_tokenizer_dir, train_file=str(path)).setup("fit")


def test_file_that_cannot_be_parsed(tmp_path, tiny_tokenizer_dir):
    path = _write(tmp_path / "broken.jsonl", '{"text": "good", "label": "p"}\n{"text": "bad", "label"\n')
    with pytest.raises(DataFileError, match=r"train file '.*broken\.jsonl' could not be read as jsonl"):
        _text_dm(tiny_tokenizer_dir, train_file=str(path)).setup("fit")


def test_example_without_a_label(tmp_path, tiny_tokenizer_dir):
    path = _write(tmp_path / "t.csv", "text,label\ngood movie,p\nbad film,\n")
    with pytest.raises(DataFileError, match=r"t\.csv: line 3 .*: empty 'label' in the train split; every example"):
        _text_dm(tiny_tokenizer_dir, train_file=str(path)).setup("fit")


def test_labels_cannot_be_inferred_without_train(tiny_tokenizer_dir, sentiment_csvs):
    dm = _text_dm(tiny_tokenizer_dir, test_file=str(sentiment_csvs["test"]))
    with pytest.raises(ValueError, match=r"cannot infer the labels without a training split; pass labels="):
        dm.setup("test")


@pytest.mark.parametrize(
    ("given", "stage", "match"),
    [
        ("test_file", "fit", r"fit needs train_file or dataset_name"),
        ("train_file", "validate", r"validate needs validation_file"),
        ("train_file", "test", r"test needs test_file \(or a dataset with a test split\)"),
        ("train_file", "predict", r"predict needs predict_file"),
    ],
)
def test_stage_without_its_file(tiny_tokenizer_dir, sentiment_csvs, given, stage, match):
    split = "test" if given == "test_file" else "train"
    dm = _text_dm(tiny_tokenizer_dir, labels=["fresh", "rotten"], **{given: str(sentiment_csvs[split])})
    with pytest.raises(ValueError, match=match):
        dm.setup(stage)


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"max_length": 1}, r"max_length=1: must be at least 2"), ({"batch_size": 0}, "batch_size=0")]
)
def test_text_classification_bad_sizes(tiny_tokenizer_dir, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _text_dm(tiny_tokenizer_dir, train_file="x.csv", **kwargs)


def test_loader_before_setup(tiny_tokenizer_dir, sentiment_csvs):
    dm = _text_dm(tiny_tokenizer_dir, train_file=str(sentiment_csvs["train"]))
    with pytest.raises(RuntimeError, match=r"no train split: call setup\(\) first or give the train file"):
        dm.train_dataloader()


def test_token_labels_cannot_be_inferred_from_unlabelled_data(tmp_path, tiny_tokenizer_dir):
    from lit_llm.datamodules import TokenClassificationDataModule

    path = _write(tmp_path / "p.conll", "john\nlives\n\nparis\n")
    dm = TokenClassificationDataModule(str(tiny_tokenizer_dir), predict_file=str(path))
    with pytest.raises(ValueError, match=r"no labelled split to infer the labels from; pass labels="):
        dm.labels  # noqa: B018


def test_hf_dataset_row_with_fewer_tags_than_tokens(tmp_path, tiny_tokenizer_dir):
    import datasets

    from lit_llm.datamodules import TokenClassificationDataModule

    rows = {"tokens": [["john", "lives"], ["mary"]], "tags": [["B-PER"], ["B-PER"]]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "ds"))
    dm = TokenClassificationDataModule(str(tiny_tokenizer_dir), dataset_name=str(tmp_path / "ds"))
    with pytest.raises(DataFileError, match=r"row 0: 2 tokens but 1 tags"):
        dm.setup("fit")


def _corpus(tmp_path, **kwargs):
    from lit_llm.datamodules import TextCorpusDataModule

    kwargs.setdefault("cache_dir", str(tmp_path / "hf_cache"))
    return TextCorpusDataModule(**kwargs)


def test_corpus_of_mixed_file_kinds(tmp_path, tiny_tokenizer_dir):
    _write(tmp_path / "a.txt", "the movie was good\n")
    _write(tmp_path / "b.csv", "text\nthe film was bad\n")
    dm = _corpus(tmp_path, data_files=[str(tmp_path / "a.txt"), str(tmp_path / "b.csv")],
                 tokenizer=str(tiny_tokenizer_dir), block_size=8)
    with pytest.raises(ValueError, match=r"need one kind of file among .* \(got suffixes \['\.csv', '\.txt'\]\)"):
        dm.setup("fit")


def test_corpus_without_its_trained_tokenizer(tmp_path):
    _write(tmp_path / "a.txt", "the movie was good\n")
    dm = _corpus(tmp_path, data_files=str(tmp_path / "a.txt"), train_tokenizer="wordpiece",
                 tokenizer_dir=str(tmp_path / "tok"))
    dm.trainer = _trainer(tmp_path)  # under a Trainer, as on a rank whose prepare_data() did not run
    with pytest.raises(FileNotFoundError, match=r"no trained tokenizer in '.*tok'; call prepare_data\(\) first"):
        dm.setup("fit")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"block_size": 4}, r"block_size=4: use at least 8 tokens"),
        ({"batch_size": 0}, r"batch_size=0 must be >= 1"),
        ({"nsp": True, "streaming": True}, r"nsp=True needs the whole corpus .*use streaming=False"),
    ],
)
def test_corpus_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _corpus(tmp_path, data_files="x.txt", tokenizer="t", **kwargs)


# ---------------------------------------------------------------------------------------------------- models
def test_sequence_classifier_bad_arguments(tiny_bert_dir):
    from lit_llm.modules import SequenceClassifier

    with pytest.raises(ValueError, match=r"num_labels=0: must be >= 1"):
        SequenceClassifier(str(tiny_bert_dir), num_labels=0)
    with pytest.raises(ValueError, match=r"SequenceClassifier\(layer_decay=0\.0\): must be in \(0, 1\]"):
        SequenceClassifier(str(tiny_bert_dir), layer_decay=0.0)


def test_sequence_classifier_without_any_labels(tiny_bert_dir):
    from lit_llm.modules import SequenceClassifier

    model = SequenceClassifier(str(tiny_bert_dir))  # a masked-LM checkpoint: generic LABEL_i names only
    with pytest.raises(ValueError, match=r"the model has no labels yet; pass labels="):
        model.classify(["a good film"])
    with pytest.raises(ValueError, match=r"SequenceClassifier\(labels=None\) takes its labels from trainer\.datamodule"
                                         r"\.labels.*load a fine-tuned model with id2label"):
        model.setup("fit")


def test_token_classifier_used_before_it_has_labels(tiny_bert_dir):
    from lit_llm.modules import TokenClassifier

    model = TokenClassifier(str(tiny_bert_dir))
    with pytest.raises(RuntimeError, match=r"TokenClassifier has no labels yet: pass labels="):
        model({"input_ids": torch.ones(1, 3, dtype=torch.long)})
    config_only = TokenClassifier({"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1,
                                   "num_attention_heads": 2}, labels=["O", "B-PER", "I-PER"])
    with pytest.raises(ValueError, match=r"the model is a config dict, so pass tokenizer="):
        config_only.tokenizer  # noqa: B018


def test_masked_lm_config_dict_without_a_tokenizer(tmp_path):
    from lit_llm.modules import MaskedLanguageModel

    mlm = MaskedLanguageModel(model={"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1,
                                     "num_attention_heads": 2}, export=False)
    with pytest.raises(ValueError, match=r"model is a config dict and no tokenizer is known"):
        _trainer(tmp_path).fit(mlm, _batches())


def test_whole_word_masking_without_word_starts(tiny_bert_dir):
    from lit_llm.modules import MaskedLanguageModel

    mlm = MaskedLanguageModel(model=str(tiny_bert_dir), whole_word_masking=True)
    batch = {"input_ids": torch.full((1, 4), 30), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    with pytest.raises(ValueError, match=r"whole_word_masking=True needs the batch's 'word_starts'"):
        mlm.mask(batch)


def test_model_config_without_model_type():
    from lit_llm.hf import build_config

    with pytest.raises(ValueError, match=r"has no 'model_type': add e\.g\. model_type: bert"):
        build_config({"hidden_size": 32})


def test_model_with_its_own_code_names_the_switch(tmp_path, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    from lit_llm.hf import load_model

    monkeypatch.delenv("LIT_LLM_TRUST_REMOTE_CODE", raising=False)
    model_dir = tmp_path / "remote"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(
        {"model_type": "custom", "auto_map": {"AutoConfig": "configuration_custom.CustomConfig"}}
    ))
    with pytest.raises(ValueError, match="LIT_LLM_TRUST_REMOTE_CODE"):
        load_model(AutoModelForSequenceClassification, str(model_dir))


def test_entity_metric_with_mismatched_shapes():
    from lit_llm.text.entities import EntityMetric

    metric = EntityMetric(["O", "B-PER", "I-PER"])
    with pytest.raises(ValueError, match=r"preds \(1, 3\) and target \(1, 2\) must have the same shape"):
        metric.update(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"kind": "unigram"}, r"kind='unigram'\): choose 'wordpiece'"), ({"vocab_size": 50}, r"vocab_size=50\): use at")],
)
def test_train_tokenizer_bad_arguments(kwargs, match):
    from lit_llm.text.tokenizer_training import train_tokenizer

    with pytest.raises(ValueError, match=match):
        train_tokenizer(["the movie"], **kwargs)


# ---------------------------------------------------------------------------------------------------- compression
def test_compression_callback_bad_arguments():
    from lit_llm.callbacks import Int8Quantization, Pruning

    with pytest.raises(ValueError, match=r"Pruning\(start_step=-1\): must be >= 0"):
        Pruning(amount=0.5, start_step=-1)
    with pytest.raises(ValueError, match=r"patterns select layers for unstructured pruning only"):
        Pruning(amount=0.5, mode="heads", patterns=["query"])
    with pytest.raises(ValueError, match=r"Int8Quantization\(compare_batches=-1\): must be >= 0"):
        Int8Quantization(compare_batches=-1)


def test_pruning_scope_that_does_not_exist():
    from transformers import BertConfig, BertForSequenceClassification

    from lit_llm.compression.pruning import magnitude_masks, structured_masks

    model = BertForSequenceClassification(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=8))
    with pytest.raises(ValueError, match=r"pruning scope='local': choose 'global' or 'per_layer'"):
        magnitude_masks(model, 0.5, scope="local")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"pruning scope='local': choose 'global' or 'per_layer'"):
        structured_masks(model, heads=0.5, scope="local")  # type: ignore[arg-type]


def test_qat_fraction_on_an_endless_run(tmp_path):
    from lit_llm.callbacks import Int8Quantization

    cb = Int8Quantization(qat_start=0.5, report=False)
    with pytest.raises(ValueError, match=r"qat_start=0\.5\): a fraction needs a finite run"):
        _trainer(tmp_path, [cb], max_steps=-1, max_epochs=-1).fit(_Tiny(), _loader())


def test_low_rank_resume_with_other_ranks():
    from lit_llm.callbacks import LowRankFactorization

    cb = LowRankFactorization(rank=2)
    cb.ranks = {"encoder.layer.0.intermediate.dense": 2}  # what this run's factorization computed
    with pytest.raises(ValueError, match=r"the checkpoint was factorized with other ranks than this run computed"):
        cb.load_state_dict({"ranks": {"encoder.layer.0.intermediate.dense": 4}})


def test_global_batch_with_a_zero_micro_batch():
    from lit_llm.callbacks.global_batch import accumulation_for

    with pytest.raises(ValueError, match=r"micro_batch_size=0 and data_parallel_size=1 must both be >= 1"):
        accumulation_for(16, 0, 1)


# ---------------------------------------------------------------------------------------------------- wandb files
def test_wandb_offline_files(tmp_path):
    from lit_llm.tracking.wandb_offline import _FILE_HEADER, find_run_file, read_offline_run

    with pytest.raises(FileNotFoundError, match=r"no run-\*\.wandb file below .*was the run logged with W&B offline"):
        find_run_file(tmp_path)
    not_wandb = _write(tmp_path / "run-x.wandb", "plain text, not a W&B file")
    with pytest.raises(ValueError, match=r"not a W&B run file \(bad header\)"):
        read_offline_run(not_wandb)
    corrupt = tmp_path / "run-y.wandb"
    corrupt.write_bytes(_FILE_HEADER.pack(b":W&B", 0xBEE1, 0) + struct.pack("<IHB", 0, 1, 9) + b"x")
    with pytest.raises(ValueError, match=r"corrupt W&B run file at byte \d+: record type 9"):
        read_offline_run(corrupt)


# ---------------------------------------------------------------------------------------------------- planner
def test_planner_bad_dimensions_and_hardware():
    from lit_llm.planning import PlanChoice
    from lit_llm.planning.presets import HardwareSpec, ModelDims

    with pytest.raises(ValueError, match=r"PlanChoice\(precision='fp8'\): choose one of 32-true"):
        PlanChoice(precision="fp8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"ModelDims\(num_layers=0\): must be a positive integer"):
        ModelDims("x", "bert", 0, 32, 4, 64, 100)
    with pytest.raises(ValueError, match=r"HardwareSpec\(memory_gib=0\): must be > 0 GiB"):
        HardwareSpec("gpu", 0, {"32": 1.0})
    with pytest.raises(ValueError, match=r"HardwareSpec\(mfu=1\.5\): must be in \(0, 1\]"):
        HardwareSpec("gpu", 8, {"32": 1.0}, mfu=1.5)
    with pytest.raises(ValueError, match=r"needs a positive '32' entry"):
        HardwareSpec("gpu", 8, {"bf16": 1.0})


def test_planner_parameter_count_for_an_impossible_task():
    from lit_llm.planning.params import parameter_tensors
    from lit_llm.planning.presets import MODEL_PRESETS

    with pytest.raises(ValueError, match=r"task 'seq2seq': choose one of"):
        parameter_tensors(MODEL_PRESETS["bert-base"], "seq2seq")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"task 'mlm' needs an encoder \(bert/roberta\), but 'gpt2'"):
        parameter_tensors(MODEL_PRESETS["gpt2"], "mlm")


def test_planner_config_without_sizes():
    from transformers import PretrainedConfig

    from lit_llm.planning.presets import dims_from_hf_config

    with pytest.raises(ValueError, match=r"its config has none of hidden_size, n_embd, d_model; the planner needs"):
        dims_from_hf_config(PretrainedConfig(), name="no-sizes")


def test_planner_model_directory_without_a_config(tmp_path):
    from lit_llm.planning import resolve_model

    with pytest.raises(ValueError, match=r"It is also no HF config \(directory has no readable config\.json"):
        resolve_model(str(tmp_path))


def _plan(capsys, *argv: str) -> tuple[int, str]:
    from lit_llm.planning.cli import main

    try:
        code = main(list(argv))
    except SystemExit as stop:  # argparse errors
        code = stop.code
    return code, capsys.readouterr().err


PLAN_BASE = ("--task", "mlm", "--seq_len", "128", "--global_batch", "32")


def test_plan_classification_config_for_explicit_dimensions(capsys, tmp_path):
    code, err = _plan(capsys, "--arch", "bert", "--layers", "2", "--hidden", "64", "--heads", "2", "--vocab", "100",
                      "--task", "classification", "--seq_len", "64", "--global_batch", "8", "--hardware", "cpu",
                      "--emit_config", str(tmp_path / "c.yaml"))
    assert code == 2
    assert "is given by its dimensions: a classification config needs a tokenizer" in err


def test_plan_token_count_that_is_not_whole(capsys):
    code, err = _plan(capsys, "--model", "bert-base", *PLAN_BASE, "--tokens", "1.5")
    assert code == 2 and "'1.5' is not a whole number" in err


def test_plan_token_count_that_is_not_a_number(capsys):
    code, err = _plan(capsys, "--model", "bert-base", *PLAN_BASE, "--tokens", "abc")
    assert code == 2 and "_count" not in err and "'abc' is not a number" in err


# ---------------------------------------------------------------------------------------------------- CLI configs
def _cli_config(tmp_path: Path, tiny_bert_dir: Path, csvs: dict[str, Path]) -> dict:
    return {
        "trainer": {"accelerator": "cpu", "max_epochs": 1, "logger": False},
        "model": {"class_path": "lit_llm.modules.SequenceClassifier", "init_args": {"model": str(tiny_bert_dir)}},
        "data": {"class_path": "lit_llm.datamodules.TextClassificationDataModule",
                 "init_args": {"tokenizer": str(tiny_bert_dir), "train_file": str(csvs["train"])}},
    }


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("model", "Option 'learning_rat' is not accepted"),
        ("trainer", "does not accept option 'trainer.max_epoch'"),
        ("top", "does not accept option 'seed_everythin'"),
    ],
)
def test_cli_config_with_an_unknown_key(tmp_path, tiny_bert_dir, sentiment_csvs, capsys, where, expected):
    from lit_llm.cli import LitLLMCLI

    config = _cli_config(tmp_path, tiny_bert_dir, sentiment_csvs)
    if where == "model":
        config["model"]["init_args"]["learning_rat"] = 0.1
    elif where == "trainer":
        config["trainer"]["max_epoch"] = 2
    else:
        config["seed_everythin"] = 1
    path = _write(tmp_path / "typo.yaml", yaml.safe_dump(config))
    with pytest.raises(SystemExit) as stop:
        LitLLMCLI(args=["fit", "--config", str(path), "--run_root", str(tmp_path / "runs")])
    assert stop.value.code == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # refused before any run directory was made


def test_unknown_subcommand_lists_every_subcommand(capsys):
    from lit_llm.cli import main

    with pytest.raises(SystemExit):
        main(["exprot"])
    err = capsys.readouterr().err
    assert "'exprot'" in err and "plan" in err and "export" in err


# ---------------------------------------------------------------------------------------------------- the catalogue
_HEADERS = {
    ("Bad input", "Exception", "Message excerpt", "Test"): "lit_llm",
    ("Bad input", "Exception", "Message excerpt", "From", "Test"): "library",
    ("Gap", "Bad input", "What happens now", "Where", "xfail test"): "gap",
}


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _codes(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _catalogue_rows() -> list[tuple[str, list[str], int]]:
    """(kind, cells, line number) of every row under a catalogue table header (kinds: see ``_HEADERS``)."""
    rows, kind = [], None
    for number, line in enumerate(CATALOGUE.read_text().splitlines(), 1):
        if not line.startswith("|"):
            kind = None
            continue
        cells = _cells(line)
        if tuple(cells) in _HEADERS:
            kind = _HEADERS[tuple(cells)]
        elif kind and not set("".join(cells)) <= set("-: "):
            rows.append((kind, cells, number))
    return rows


def _test_functions(path: Path, cache: dict[Path, dict[str, ast.FunctionDef]]) -> dict[str, ast.FunctionDef]:
    if path not in cache:
        tree = ast.parse(path.read_text())
        cache[path] = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    return cache[path]


def _known_exception(name: str, sources: str) -> bool:
    builtin = getattr(builtins, name, None)
    if isinstance(builtin, type) and issubclass(builtin, BaseException):
        return True
    if re.search(rf"^class {re.escape(name)}\(", sources, re.MULTILINE):
        return True
    return name == "ArgumentTypeError" and f"argparse.{name}" in sources


def test_catalogue_is_true():
    """Every row names tests that exist, an exception type, and a message excerpt the code (or test) really holds."""
    sources = "\n".join(p.read_text() for p in sorted(PACKAGE.rglob("*.py")))
    rows = _catalogue_rows()
    assert sum(kind == "lit_llm" for kind, _, _ in rows) > 100, f"{CATALOGUE} lost its tables ({len(rows)} rows)"
    cache: dict[Path, dict[str, ast.FunctionDef]] = {}
    problems = []
    for kind, cells, number in rows:
        where = f"{CATALOGUE.name}:{number}"
        width = next(len(h) for h, k in _HEADERS.items() if k == kind)
        if len(cells) != width:
            problems.append(f"{where}: {len(cells)} cells, expected {width}")
            continue
        node_ids = _codes(cells[-1])
        if not node_ids:
            problems.append(f"{where}: no test named")
        test_files = []
        for node_id in node_ids:
            file_part, _, function = node_id.partition("::")
            function = function.split("[", 1)[0]
            test_file = REPO / file_part
            if not (file_part.startswith("tests/") and test_file.is_file() and function.startswith("test")):
                problems.append(f"{where}: {node_id!r} is not a test node id of an existing file")
                continue
            test_files.append(test_file)
            found = _test_functions(test_file, cache).get(function)
            if found is None:
                problems.append(f"{where}: {node_id!r}: no function {function} in {file_part}")
            elif kind == "gap" and "xfail" not in " ".join(ast.unparse(d) for d in found.decorator_list):
                problems.append(f"{where}: {node_id!r} is not marked xfail")
        if kind == "gap":
            continue
        exception, excerpt = (_codes(cells[1]) or [""])[0], (_codes(cells[2]) or [""])[0]
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", exception) or not _known_exception(exception, sources):
            problems.append(f"{where}: exception type {cells[1]!r} is neither builtin nor defined in lit_llm")
        if not 2 <= len(excerpt.split()) <= 10 or "{" in excerpt:
            problems.append(f"{where}: excerpt {excerpt!r} must be a literal of 2-10 words, without placeholders")
        if kind == "lit_llm" and excerpt not in sources:
            problems.append(f"{where}: {excerpt!r} appears in no file under lit_llm/")
        if kind == "library" and not any(excerpt in f.read_text() for f in test_files):
            problems.append(f"{where}: {excerpt!r} (a library's message) is checked by none of its tests")
    assert not problems, "\n".join(problems)
