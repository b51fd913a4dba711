import json

import pandas as pd
import pytest
import torch

from lit_llm.datamodules import TextClassificationDataModule
from lit_llm.datamodules.files import DataFileError
from lit_llm.errors import InvalidArgumentError


def _dm(tok, **kwargs):
    kwargs.setdefault("batch_size", 8)
    return TextClassificationDataModule(str(tok), **kwargs)


def test_csv_splits_labels_and_dynamic_padding(tiny_tokenizer_dir, sentiment_csvs):
    dm = _dm(
        tiny_tokenizer_dir,
        train_file=str(sentiment_csvs["train"]),
        validation_file=str(sentiment_csvs["val"]),
        test_file=str(sentiment_csvs["test"]),
    )
    assert dm.labels == ["fresh", "rotten"]
    dm.setup("fit")
    dm.setup("test")
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 96, "validation": 32, "test": 32}
    batch = next(iter(dm.val_dataloader()))
    assert set(batch) >= {"input_ids", "attention_mask", "labels"}
    # Padded to the longest example of the batch, not to max_length.
    assert batch["input_ids"].shape[1] == int(batch["attention_mask"].sum(1).max())
    assert batch["input_ids"].shape[1] < dm.max_length
    assert batch["labels"].dtype == torch.long


@pytest.mark.parametrize("fmt", ["tsv", "json", "jsonl", "parquet"])
def test_other_formats(tiny_tokenizer_dir, tmp_path, fmt):
    df = pd.DataFrame({"review": ["good movie", "bad film", "great story", "awful plot"], "y": ["p", "n", "p", "n"]})
    path = tmp_path / f"data.{fmt}"
    if fmt == "tsv":
        df.to_csv(path, sep="\t", index=False)
    elif fmt == "json":
        path.write_text(json.dumps(df.to_dict(orient="records")))
    elif fmt == "jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_parquet(path)
    dm = _dm(tiny_tokenizer_dir, train_file=str(path), validation_file=str(path), text_field="review", label_field="y")
    dm.setup("fit")
    assert dm.labels == ["n", "p"]
    assert dm.datasets["train"]["labels"] == [1, 0, 1, 0]


def test_text_pairs_and_labels_given(tiny_tokenizer_dir, tmp_path):
    path = tmp_path / "pairs.csv"
    pd.DataFrame({"a": ["good movie", "the film"], "b": ["great", "bad"], "label": ["yes", "no"]}).to_csv(
        path, index=False
    )
    dm = _dm(
        tiny_tokenizer_dir,
        train_file=str(path),
        validation_file=str(path),
        text_pair_field="b",
        labels=["yes", "no"],
        text_field="a",
    )
    dm.setup("fit")
    row = dm.datasets["train"][0]
    assert row["labels"] == 0 and 1 in row["token_type_ids"]


def test_stratified_seeded_validation_split(tiny_tokenizer_dir, tmp_path):
    path = tmp_path / "train.csv"
    labels = ["a"] * 80 + ["b"] * 20
    pd.DataFrame({"text": [f"the movie {i % 7}" for i in range(100)], "label": labels}).to_csv(path, index=False)
    first = _dm(tiny_tokenizer_dir, train_file=str(path), val_fraction=0.2, seed=3)
    first.setup("fit")
    val = first.datasets["validation"]["labels"]
    assert len(val) == 20 and sorted(val).count(1) == 4  # 20% of the 20 "b" rows
    again = _dm(tiny_tokenizer_dir, train_file=str(path), val_fraction=0.2, seed=3)
    again.setup("fit")
    assert again.datasets["validation"]["input_ids"] == first.datasets["validation"]["input_ids"]


def test_truncation_is_counted(tiny_tokenizer_dir, tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame({"text": ["good " * 30, "bad movie"], "label": ["p", "n"]}).to_csv(path, index=False)
    dm = _dm(tiny_tokenizer_dir, train_file=str(path), validation_file=str(path), max_length=8)
    dm.setup("fit")
    assert dm.truncated["train"] == 1
    assert max(len(ids) for ids in dm.datasets["train"]["input_ids"]) == 8


def test_tokenization_is_cached(tiny_tokenizer_dir, sentiment_csvs):
    kwargs = dict(train_file=str(sentiment_csvs["train"]), validation_file=str(sentiment_csvs["val"]))
    first = _dm(tiny_tokenizer_dir, **kwargs)
    first.setup("fit")
    files = {f["filename"] for f in first.datasets["train"].cache_files}
    assert files, "tokenized split should live in datasets' cache files"
    second = _dm(tiny_tokenizer_dir, **kwargs)
    second.setup("fit")
    assert {f["filename"] for f in second.datasets["train"].cache_files} == files


def test_multi_label(tiny_tokenizer_dir, tmp_path):
    path = tmp_path / "ml.csv"
    pd.DataFrame({"text": ["good fun", "bad", "fun"], "label": ["pos;fun", "neg", "fun"]}).to_csv(path, index=False)
    dm = _dm(tiny_tokenizer_dir, train_file=str(path), validation_file=str(path), multi_label=True)
    dm.setup("fit")
    assert dm.labels == ["fun", "neg", "pos"]
    assert dm.datasets["train"]["labels"][0] == [1.0, 0.0, 1.0]
    assert next(iter(dm.train_dataloader()))["labels"].dtype == torch.float32


def test_predict_keeps_texts(tiny_tokenizer_dir, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"text": "good movie"}\n{"text": "bad film"}\n')
    dm = _dm(tiny_tokenizer_dir, predict_file=str(path), labels=["n", "p"])
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert batch["text"] == ["good movie", "bad film"] and "labels" not in batch


# ---------------------------------------------------------------- bad input
def test_missing_file(tiny_tokenizer_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train file '.*nope\.csv' does not exist"):
        _dm(tiny_tokenizer_dir, train_file=str(tmp_path / "nope.csv")).setup("fit")


def test_unsupported_extension(tiny_tokenizer_dir, tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_text("x")
    with pytest.raises(DataFileError, match=r"unsupported extension '\.xlsx'; use one of \.csv"):
        _dm(tiny_tokenizer_dir, train_file=str(path)).setup("fit")


def test_missing_text_column_lists_columns(tiny_tokenizer_dir, tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("review,label\ngood,p\n")
    with pytest.raises(DataFileError, match=r"no column 'text' \(the text_field\)\. Columns found: review, label"):
        _dm(tiny_tokenizer_dir, train_file=str(path)).setup("fit")


def test_missing_label_column(tiny_tokenizer_dir, tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,sentiment\ngood,p\n")
    with pytest.raises(DataFileError, match=r"no column 'label' \(the label_field\).*text, sentiment"):
        _dm(tiny_tokenizer_dir, train_file=str(path)).setup("fit")


def test_empty_dataset(tiny_tokenizer_dir, tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(DataFileError, match=r"empty\.jsonl"):
        _dm(tiny_tokenizer_dir, train_file=str(path)).setup("fit")
    csv = tmp_path / "header_only.csv"
    csv.write_text("text,label\n")
    with pytest.raises(DataFileError, match=r"header_only\.csv' has no rows"):
        _dm(tiny_tokenizer_dir, train_file=str(csv)).setup("fit")


def test_unseen_label_in_test(tiny_tokenizer_dir, sentiment_csvs, tmp_path):
    test = tmp_path / "test.csv"
    test.write_text("text,label\ngood movie,fresh\nbad movie,meh\n")
    dm = _dm(tiny_tokenizer_dir, train_file=str(sentiment_csvs["train"]), test_file=str(test))
    with pytest.raises(DataFileError, match=r"test\.csv: line 3 .*label 'meh' is never seen in train"):
        dm.setup("test")


def test_label_outside_configured_set(tiny_tokenizer_dir, sentiment_csvs):
    dm = _dm(tiny_tokenizer_dir, train_file=str(sentiment_csvs["train"]), labels=["fresh"])
    with pytest.raises(DataFileError, match=r"label 'rotten' is not in the configured labels"):
        dm.setup("fit")


def test_not_utf8_names_line(tiny_tokenizer_dir, tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\ngood,p\nd\u00e9j\u00e0 vu,n\n".encode("latin-1"))
    with pytest.raises(DataFileError, match=r"latin1\.csv: line 3, column 2 is not valid UTF-8"):
        _dm(tiny_tokenizer_dir, train_file=str(path)).setup("fit")


@pytest.mark.parametrize(
    "content,kind", [("text,label\ngood,p\n,n\n", "null"), ("text,label\ngood,p\n   ,n\n", "empty")]
)
def test_empty_or_null_text(tiny_tokenizer_dir, tmp_path, content, kind):
    path = tmp_path / "t.csv"
    path.write_text(content)
    with pytest.raises(DataFileError, match=rf"t\.csv: line 3 .*: {kind} 'text'"):
        _dm(tiny_tokenizer_dir, train_file=str(path)).setup("fit")


def test_bad_arguments(tiny_tokenizer_dir):
    with pytest.raises(ValueError, match="give train_file"):
        TextClassificationDataModule(str(tiny_tokenizer_dir))
    with pytest.raises(ValueError, match=r"val_fraction=1\.5"):
        TextClassificationDataModule(str(tiny_tokenizer_dir), train_file="x.csv", val_fraction=1.5)


def test_hf_dataset_by_name_from_a_local_directory(tiny_tokenizer_dir, tmp_path):
    # The real load_dataset path, pointed at a local dataset directory (no hub access here).
    root = tmp_path / "my_dataset"
    root.mkdir()
    pd.DataFrame({"text": ["good movie", "bad film", "great fun"], "label": ["p", "n", "p"]}).to_csv(
        root / "train.csv", index=False
    )
    pd.DataFrame({"text": ["awful plot", "brilliant"], "label": ["n", "p"]}).to_csv(root / "test.csv", index=False)
    dm = _dm(tiny_tokenizer_dir, dataset_name=str(root), val_fraction=0.34)
    dm.setup("fit")
    dm.setup("test")
    assert dm.labels == ["n", "p"]
    assert len(dm.datasets["train"]) + len(dm.datasets["validation"]) == 3
    assert dm.datasets["test"]["labels"] == [0, 1]


# ---------------------------------------------------------------- regression
def test_regression_reads_numbers_from_csv_and_jsonl(tiny_tokenizer_dir, tmp_path):
    csv_path = tmp_path / "r.csv"
    csv_path.write_text("text,score\ngood movie,3.5\nbad film,-1\nthe plot, 2e-1 \n")
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text('{"text": "good movie", "score": 3.5}\n{"text": "bad film", "score": "-1"}\n')
    dm = _dm(tiny_tokenizer_dir, train_file=str(csv_path), validation_file=str(jsonl), label_field="score",
             regression=True, batch_size=8)
    dm.setup("fit")
    assert dm.labels == ["score"] and dm.num_labels == 1
    batch = next(iter(dm.train_dataloader()))
    assert batch["labels"].dtype == torch.float32
    assert sorted(batch["labels"].tolist()) == pytest.approx([-1.0, 0.2, 3.5])
    assert next(iter(dm.val_dataloader()))["labels"].tolist() == [3.5, -1.0]


def test_regression_carves_validation_without_stratifying(tiny_tokenizer_dir, tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("text,score\n" + "".join(f"good movie {i},{i / 10}\n" for i in range(40)))
    dm = _dm(tiny_tokenizer_dir, train_file=str(path), label_field="score", regression=True, val_fraction=0.25)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 30 and len(dm.datasets["validation"]) == 10


@pytest.mark.parametrize(
    ("name", "content", "where", "shown"),
    [
        ("r.csv", "text,score\ngood,1.0\nbad,high\n", r"r.csv: line 3 \(data row 2; line 1 is the header\)", "'high'"),
        ("r.csv", "text,score\ngood,1.0\nbad,\n", r"r.csv: line 3 \(data row 2", "empty"),
        ("r.csv", "text,score\ngood,1.0\nbad,inf\n", r"r.csv: line 3", "inf|'inf'"),
        ("r.jsonl", '{"text": "good", "score": 1}\n{"text": "bad", "score": true}\n', r"r.jsonl: line 2", "True"),
        ("r.jsonl", '{"text": "good", "score": 1}\n{"text": "bad", "score": [1]}\n', r"r.jsonl: line 2", r"\[1\]"),
    ],
)
def test_regression_value_that_is_not_a_number(tiny_tokenizer_dir, tmp_path, name, content, where, shown):
    path = tmp_path / name
    path.write_text(content)
    dm = _dm(tiny_tokenizer_dir, train_file=str(path), validation_file=str(path), label_field="score", regression=True)
    with pytest.raises(DataFileError, match=rf"{where}.*: 'score' is ({shown}), not a number; regression needs"):
        dm.setup("fit")


def test_regression_with_labels_or_multi_label_is_refused(tiny_tokenizer_dir):
    with pytest.raises(InvalidArgumentError, match=r"regression=True with labels=\['a'\]: a regression target is one"):
        _dm(tiny_tokenizer_dir, train_file="x.csv", regression=True, labels=["a"])
    with pytest.raises(InvalidArgumentError, match=r"regression=True with multi_label=True"):
        _dm(tiny_tokenizer_dir, train_file="x.csv", regression=True, multi_label=True)
