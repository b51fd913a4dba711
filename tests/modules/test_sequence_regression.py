"""SequenceClassifier on a real-valued target: MSE, MAE / RMSE / Pearson / Spearman, report, export, predict."""

from __future__ import annotations

import functools
import json
import random

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_llm.datamodules import TextClassificationDataModule
from lit_llm.errors import InvalidArgumentError
from lit_llm.modules import SequenceClassifier
from tests.export_helpers import fresh_process_logits

POSITIVE = ["good", "great", "brilliant", "fun", "loved", "best"]
NEGATIVE = ["bad", "awful", "boring", "dull", "hated", "worst"]
FILLER = ["the", "movie", "film", "story", "was", "really", "very", "acting", "script"]


def rating_rows(n: int, seed: int) -> list[tuple[str, float]]:
    """Texts whose rating is (positive words - negative words), in [-2, 2]: learnable by a tiny model."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        pos, neg = rng.randint(0, 2), rng.randint(0, 2)
        words = rng.sample(FILLER, 3) + rng.sample(POSITIVE, pos) + rng.sample(NEGATIVE, neg)
        rng.shuffle(words)
        rows.append((" ".join(words), float(pos - neg)))
    return rows


@pytest.fixture()
def rating_csvs(tmp_path):
    paths = {}
    for split, n, seed in (("train", 128, 0), ("val", 32, 1), ("test", 32, 2)):
        path = tmp_path / f"{split}.csv"
        path.write_text("text,rating\n" + "".join(f"{t},{r}\n" for t, r in rating_rows(n, seed)))
        paths[split] = path
    return paths


def _data(tok, csvs, **kwargs):
    return TextClassificationDataModule(
        str(tok), train_file=str(csvs["train"]), validation_file=str(csvs["val"]), test_file=str(csvs["test"]),
        label_field="rating", regression=True, batch_size=16, **kwargs,
    )


def _trainer(tmp_path, **kwargs):
    defaults = dict(accelerator="cpu", devices=1, max_steps=40, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                    num_sanity_val_steps=0)
    return Trainer(**{**defaults, **kwargs})


@pytest.mark.slow
def test_regression_fit_test_export_checkpoint_and_pipeline(tmp_path, tiny_bert_dir, rating_csvs):
    torch.manual_seed(0)
    model = SequenceClassifier(str(tiny_bert_dir), optimizer=functools.partial(torch.optim.AdamW, lr=3e-3))
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/rmse", mode="min")
    trainer = _trainer(tmp_path, max_steps=80, enable_checkpointing=True, callbacks=[ckpt], val_check_interval=8)
    dm = _data(tiny_bert_dir, rating_csvs)
    trainer.fit(model, datamodule=dm)
    config = model.model.config
    assert model.regression and config.problem_type == "regression" and config.num_labels == 1
    assert config.id2label == {0: "rating"}
    assert set(trainer.callback_metrics) >= {"val/mae", "val/rmse", "val/pearson", "val/spearman", "val/loss"}

    trainer.test(model, datamodule=dm)
    report = model.test_report
    # Learned, not a constant: the targets' spread is about 1.15, so an RMSE well under it and a high correlation.
    assert report["rmse"] < 0.6 and report["pearson"] > 0.8, report
    saved = json.loads((tmp_path / "reports" / "regression_report.json").read_text())
    assert saved == report and model.report_path == tmp_path / "reports" / "regression_report.txt"
    assert not (tmp_path / "reports" / "confusion_matrix.png").exists()

    # Predict through the module, the fit-end export in a fresh process, and the pipeline: the same raw values.
    texts = ["the movie was brilliant and fun", "the movie was awful and boring"]
    values = [p["score"] for p in model.classify(texts)]
    assert values[0] > values[1]
    [fresh] = fresh_process_logits([tmp_path / "export"], texts)
    assert [row[0] for row in fresh["logits"]] == pytest.approx(values, abs=1e-4)

    from transformers import pipeline

    out = pipeline("text-classification", model=str(tmp_path / "export"), device="cpu")(texts)
    assert [o["label"] for o in out] == ["rating", "rating"]
    assert [o["score"] for o in out] == pytest.approx(values, abs=1e-4)  # raw values, no sigmoid

    # `lit-llm export` of the best checkpoint rebuilds a regression module from its hyper-parameters.
    from lit_llm.commands.export import export_checkpoint

    exported = export_checkpoint(ckpt.best_model_path, tmp_path / "from_ckpt", "lit_llm.modules.SequenceClassifier")
    again = SequenceClassifier(str(exported))
    assert again.regression and again.labels == ["rating"]
    assert again.classify(texts)[0]["score"] == pytest.approx(
        SequenceClassifier(str(exported)).classify(texts)[0]["score"], abs=1e-6
    )


def test_regression_predict_step_writes_values(tmp_path, tiny_bert_dir):
    path = tmp_path / "p.csv"
    path.write_text("text\ngood movie\nbad film\n")
    model = SequenceClassifier(str(tiny_bert_dir), labels=["rating"], regression=True)
    dm = TextClassificationDataModule(str(tiny_bert_dir), predict_file=str(path), label_field="rating",
                                      regression=True, batch_size=2)
    [batch] = _trainer(tmp_path).predict(model, datamodule=dm)
    assert [p["text"] for p in batch] == ["good movie", "bad film"]
    assert all(p["label"] == "rating" and isinstance(p["score"], float) for p in batch)


def test_classifier_on_regression_data_is_refused(tmp_path, tiny_bert_dir, rating_csvs):
    model = SequenceClassifier(str(tiny_bert_dir), labels=["neg", "pos"])
    with pytest.raises(InvalidArgumentError, match=r"the model is a classifier but the datamodule has regression=True"):
        _trainer(tmp_path, max_steps=1).fit(model, datamodule=_data(tiny_bert_dir, rating_csvs))


def test_regression_model_on_class_data_is_refused(tmp_path, tiny_bert_dir, sentiment_csvs):
    model = SequenceClassifier(str(tiny_bert_dir), labels=["rating"], regression=True)
    dm = TextClassificationDataModule(str(tiny_bert_dir), train_file=str(sentiment_csvs["train"]), batch_size=16)
    with pytest.raises(InvalidArgumentError, match=r"is a regression model but the datamodule has regression=False"):
        _trainer(tmp_path, max_steps=1).fit(model, datamodule=dm)


def test_regression_argument_errors(tmp_path, tiny_bert_dir):
    with pytest.raises(InvalidArgumentError, match=r"regression=True and multi_label=True"):
        SequenceClassifier(str(tiny_bert_dir), regression=True, multi_label=True)
    with pytest.raises(InvalidArgumentError, match=r"a regression model has one output, named by one label"):
        SequenceClassifier(str(tiny_bert_dir), labels=["a", "b"], regression=True)
    export = tmp_path / "reg"
    SequenceClassifier(str(tiny_bert_dir), labels=["rating"], regression=True).model.save_pretrained(export)
    with pytest.raises(InvalidArgumentError, match=r"is a regression model \(problem_type 'regression'\)"):
        SequenceClassifier(str(export), regression=False, tokenizer=str(tiny_bert_dir))
