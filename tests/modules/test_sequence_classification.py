import functools

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_llm.datamodules import TextClassificationDataModule
from lit_llm.modules import SequenceClassifier


def _trainer(tmp_path, **kwargs):
    defaults = dict(
        accelerator="cpu",
        devices=1,
        max_steps=12,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
    )
    defaults.update(kwargs)
    return Trainer(**defaults)


def _data(tok, csvs, **kwargs):
    return TextClassificationDataModule(
        str(tok),
        train_file=str(csvs["train"]),
        validation_file=str(csvs["val"]),
        test_file=str(csvs["test"]),
        batch_size=16,
        **kwargs,
    )


def test_fit_test_export_and_pipeline(tmp_path, tiny_bert_dir, sentiment_csvs):
    torch.manual_seed(0)
    model = SequenceClassifier(str(tiny_bert_dir), optimizer=functools.partial(torch.optim.AdamW, lr=3e-3))
    dm = _data(tiny_bert_dir, sentiment_csvs)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/accuracy", mode="max")
    trainer = _trainer(tmp_path, max_steps=36, enable_checkpointing=True, callbacks=[ckpt], val_check_interval=6)
    trainer.fit(model, datamodule=dm)
    assert model.labels == ["fresh", "rotten"]
    assert model.model.config.id2label == {0: "fresh", 1: "rotten"}
    assert ckpt.best_model_score is not None and float(ckpt.best_model_score) > 0.8  # the task is learnable

    trainer.test(model, datamodule=dm)
    assert model.test_report["accuracy"] > 0.8
    assert (tmp_path / "reports" / "classification_report.txt").is_file()
    assert (tmp_path / "reports" / "confusion_matrix.png").is_file()
    assert model.report_path == tmp_path / "reports" / "classification_report.txt"

    from transformers import pipeline

    export = tmp_path / "export"
    assert model.export_path == export and (export / "config.json").is_file() and (export / "tokenizer.json").is_file()
    clf = pipeline("text-classification", model=str(export), device="cpu")
    out = clf(["the movie was brilliant and fun", "the movie was awful and boring"])
    assert [o["label"] for o in out] == ["fresh", "rotten"]

    # The exported directory reloads as a module with its labels, and classify() agrees with the pipeline.
    again = SequenceClassifier(str(export))
    assert again.labels == ["fresh", "rotten"]
    preds = again.classify(["the movie was brilliant and fun", "the movie was awful and boring"])
    assert [p["label"] for p in preds] == ["fresh", "rotten"]
    assert preds[0]["probabilities"]["fresh"] == pytest.approx(out[0]["score"], abs=1e-4)


def test_export_dir_never_overwritten(tmp_path, tiny_bert_dir, sentiment_csvs):
    export = tmp_path / "mine"
    export.mkdir()
    (export / "notes.txt").write_text("precious")
    model = SequenceClassifier(str(tiny_bert_dir), export_dir=str(export))
    with pytest.raises(FileExistsError, match=r"mine' already holds files"):
        _trainer(tmp_path, max_steps=1).fit(model, datamodule=_data(tiny_bert_dir, sentiment_csvs))
    assert (export / "notes.txt").read_text() == "precious"


def test_predict_returns_labels_and_probabilities(tmp_path, tiny_bert_dir):
    path = tmp_path / "p.csv"
    path.write_text("text\ngood movie\nbad film\nthe plot\n")
    model = SequenceClassifier(str(tiny_bert_dir), labels=["neg", "pos"])
    dm = TextClassificationDataModule(str(tiny_bert_dir), predict_file=str(path), labels=["neg", "pos"], batch_size=2)
    batches = _trainer(tmp_path).predict(model, datamodule=dm)
    preds = [p for b in batches for p in b]
    assert [p["text"] for p in preds] == ["good movie", "bad film", "the plot"]
    for p in preds:
        assert p["label"] in ("neg", "pos")
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert p["score"] == max(p["probabilities"].values())


def test_multi_label_uses_bce(tmp_path, tiny_bert_dir):
    path = tmp_path / "ml.jsonl"
    rows = ['{"text": "good fun movie", "label": ["pos", "fun"]}', '{"text": "bad film", "label": ["neg"]}'] * 8
    path.write_text("\n".join(rows) + "\n")
    dm = TextClassificationDataModule(
        str(tiny_bert_dir),
        train_file=str(path),
        validation_file=str(path),
        test_file=str(path),
        multi_label=True,
        batch_size=4,
    )
    model = SequenceClassifier(str(tiny_bert_dir), optimizer=functools.partial(torch.optim.AdamW, lr=1e-2))
    trainer = _trainer(tmp_path, max_steps=20)
    trainer.fit(model, datamodule=dm)
    assert model.multi_label and model.model.config.problem_type == "multi_label_classification"
    trainer.test(model, datamodule=dm)
    assert set(model.test_report) >= {"fun", "neg", "pos", "micro avg", "macro avg", "weighted avg"}
    out = model.classify(["good fun movie"])[0]
    assert set(out["labels"]) <= {"fun", "neg", "pos"} and len(out["probabilities"]) == 3


def test_num_labels_disagreeing_with_data(tmp_path, tiny_bert_dir, sentiment_csvs):
    model = SequenceClassifier(str(tiny_bert_dir), num_labels=3)
    with pytest.raises(ValueError, match=r"num_labels=3 but 2 labels were found \(fresh, rotten\)"):
        _trainer(tmp_path).fit(model, datamodule=_data(tiny_bert_dir, sentiment_csvs))


def test_model_and_data_labels_must_agree(tmp_path, tiny_bert_dir, sentiment_csvs):
    model = SequenceClassifier(str(tiny_bert_dir), labels=["rotten", "fresh"])
    with pytest.raises(ValueError, match=r"data's labels \['fresh', 'rotten'\] differ from the model's"):
        _trainer(tmp_path).fit(model, datamodule=_data(tiny_bert_dir, sentiment_csvs))


@pytest.mark.parametrize("name", ["AdamW", "Adam", "SGD", "Adagrad"])
def test_any_torch_optimizer_with_no_decay_groups(tiny_bert_dir, name):
    factory = functools.partial(getattr(torch.optim, name), lr=0.01, weight_decay=0.1)
    model = SequenceClassifier(str(tiny_bert_dir), labels=["a", "b"], optimizer=factory)
    opt = model.configure_optimizers()
    assert type(opt).__name__ == name
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(
        n.endswith("bias") or "LayerNorm" in n or "embeddings" in n for n in map(names.get, map(id, no_decay["params"]))
    )
    assert all(n.endswith("weight") and "LayerNorm" not in n for n in map(names.get, map(id, decay["params"])))


def test_layer_decay_scales_group_rates(tiny_bert_dir):
    model = SequenceClassifier(
        str(tiny_bert_dir), labels=["a", "b"], layer_decay=0.5, optimizer=functools.partial(torch.optim.AdamW, lr=0.1)
    )
    opt = model.configure_optimizers()
    rates = {g["group_name"]: g["lr"] for g in opt.param_groups}
    assert rates["layer_3_decay"] == pytest.approx(0.1)  # classifier / pooler on top of 2 blocks
    assert rates["layer_2_decay"] == pytest.approx(0.05)
    assert rates["layer_0_no_decay"] == pytest.approx(0.0125)  # embeddings


def test_from_config_dict_and_gradient_checkpointing(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, sentiment_csvs):
    config = dict(
        model_type="bert",
        vocab_size=len(tiny_tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
    )
    model = SequenceClassifier(config, tokenizer=str(tiny_tokenizer_dir), gradient_checkpointing=True)
    _trainer(tmp_path, max_steps=2).fit(model, datamodule=_data(tiny_tokenizer_dir, sentiment_csvs))
    assert getattr(model.model, "is_activation_checkpointing", None) or model.model.is_gradient_checkpointing
    assert model.model.training  # dropout is on while training (HF loads models in eval mode)


def test_config_dict_needs_tokenizer():
    with pytest.raises(ValueError, match="also give tokenizer"):
        SequenceClassifier({"model_type": "bert"})


def test_missing_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model '.*/nothing/here' does not exist"):
        SequenceClassifier(str(tmp_path / "nothing" / "here"), labels=["a"])
