"""TokenClassificationDataModule and the CoNLL / JSON readers: parsing, tag checks, sub-token alignment, batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lit_llm.datamodules import TokenClassificationDataModule
from lit_llm.datamodules.conll import check_tags, read_conll, read_json, read_tagged
from lit_llm.datamodules.files import DataFileError
from lit_llm.datamodules.token_classification import align_labels

CONLL = """-DOCSTART- -X- O O

john\tB-PER
lives\tO
in\tO
new\tB-LOC
york\tI-LOC
\t
mary  B-PER
loved   O
paris B-LOC
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture()
def conll_files(tmp_path) -> dict[str, Path]:
    train = write(tmp_path / "train.conll", CONLL)
    val = write(tmp_path / "val.conll", "the\tO\ngoogle\tB-ORG\nteam\tO\n\njohn\tB-PER\n")
    test = write(tmp_path / "test.txt", "apple\tB-ORG\nin\tO\nlondon\tB-LOC\n")
    pred = write(tmp_path / "predict.conll", "johnny\nlives\nin\nlondon\n\nhello\n")
    return {"train": train, "validation": val, "test": test, "predict": pred}


def make_dm(tokenizer_dir, files, **kwargs) -> TokenClassificationDataModule:
    return TokenClassificationDataModule(
        str(tokenizer_dir),
        train_file=str(files["train"]),
        validation_file=str(files["validation"]),
        test_file=str(files["test"]),
        predict_file=str(files.get("predict")) if files.get("predict") else None,
        batch_size=2,
        **kwargs,
    )


# ---------------------------------------------------------------- readers
def test_read_conll_tabs_spaces_docstart_and_lone_tab_lines(conll_files):
    sents = read_conll(conll_files["train"])
    assert [s.tokens for s in sents] == [["john", "lives", "in", "new", "york"], ["mary", "loved", "paris"]]
    assert [s.tags for s in sents] == [["B-PER", "O", "O", "B-LOC", "I-LOC"], ["B-PER", "O", "B-LOC"]]
    assert sents[1].lines == [9, 10, 11]
    assert sents[1].where(2) == f"{conll_files['train']}: line 11"


def test_read_conll_takes_first_and_last_columns(tmp_path):
    path = write(tmp_path / "c.conll", "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n")
    assert read_conll(path)[0].tags == ["B-ORG", "O"]


def test_malformed_conll_line_names_file_and_line(tmp_path):
    path = write(tmp_path / "bad.conll", "john\tB-PER\n\nmary\nloved\tO\n")
    with pytest.raises(DataFileError, match=r"bad\.conll: line 3: expected 'token<TAB>tag', got 'mary'"):
        read_conll(path)


def test_conll_without_sentences(tmp_path):
    with pytest.raises(DataFileError, match="no sentences found"):
        read_conll(write(tmp_path / "empty.conll", "\n\t\n-DOCSTART- O\n"))


def test_read_json_and_jsonl(tmp_path):
    records = [{"tokens": ["john", "lives"], "tags": ["B-PER", "O"]}, {"tokens": ["paris"], "tags": ["B-LOC"]}]
    as_json = write(tmp_path / "d.json", json.dumps(records))
    as_jsonl = write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in records) + "\n")
    for path in (as_json, as_jsonl):
        sents = read_tagged(path)
        assert [s.tokens for s in sents] == [["john", "lives"], ["paris"]]
        assert [s.tags for s in sents] == [["B-PER", "O"], ["B-LOC"]]
    assert read_tagged(as_jsonl)[1].where() == f"{as_jsonl}: line 2"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"tokens": ["a", "b"], "tags": ["O"]}\n', r"d\.jsonl: line 1: 2 tokens but 1 tags"),
        ('{"tokens": ["a"]}\n', r"line 1: no 'tags' key"),
        ('{"words": ["a"], "tags": ["O"]}\n', r"line 1: no 'tokens' key"),
        ('{"tokens": ["a"], "tags": ["O"]}\n{oops\n', r"line 2: not valid JSON"),
    ],
)
def test_json_errors(tmp_path, text, match):
    with pytest.raises(DataFileError, match=match):
        read_json(write(tmp_path / "d.jsonl", text))


# ---------------------------------------------------------------- tag checks
def test_i_without_b_is_an_error_naming_file_and_line(tmp_path, tiny_tokenizer_dir):
    path = write(tmp_path / "train.conll", "john\tB-PER\n\nthe\tO\nyork\tI-LOC\n")
    dm = TokenClassificationDataModule(str(tiny_tokenizer_dir), train_file=str(path))
    with pytest.raises(DataFileError, match=r"train\.conll: line 4: tag 'I-LOC' after 'O' is not valid BIO .*B-LOC"):
        dm.setup("fit")


def test_i_without_b_is_repaired_when_asked(tmp_path, tiny_tokenizer_dir):
    path = write(tmp_path / "train.conll", "john\tB-PER\n\nthe\tO\nyork\tI-LOC\nnew\tI-PER\n")
    dm = TokenClassificationDataModule(str(tiny_tokenizer_dir), train_file=str(path), repair_tags=True)
    with pytest.warns(UserWarning, match="repaired 1 ill-formed BIO"):
        dm.setup("fit")
    assert dm.sentences("train")[1].tags == ["O", "B-LOC", "B-PER"]
    assert dm.repaired == {"train": 1}


def test_bioes_chunk_without_end_names_line(tmp_path, tiny_tokenizer_dir):
    path = write(tmp_path / "train.conll", "new\tB-LOC\nyork\tI-LOC\nis\tO\n")
    dm = TokenClassificationDataModule(str(tiny_tokenizer_dir), train_file=str(path), tag_scheme="BIOES")
    with pytest.raises(DataFileError, match=r"line 1: tag 'B-LOC' .* not valid BIOES .*must end with E-LOC"):
        dm.setup("fit")


def test_bioes_tag_in_bio_scheme(tmp_path, tiny_tokenizer_dir):
    path = write(tmp_path / "train.conll", "paris\tS-LOC\n")
    dm = TokenClassificationDataModule(str(tiny_tokenizer_dir), train_file=str(path))
    with pytest.raises(DataFileError, match=r"line 1: tag 'S-LOC' is a BIOES tag but tag_scheme='BIO'"):
        dm.setup("fit")


def test_malformed_tag(tmp_path):
    sents = read_conll(write(tmp_path / "t.conll", "john\tPER\n"))
    with pytest.raises(DataFileError, match=r"t\.conll: line 1: tag 'PER' is not 'O' or"):
        check_tags(sents, "BIO")


def test_tag_missing_from_configured_labels(conll_files, tiny_tokenizer_dir):
    dm = make_dm(tiny_tokenizer_dir, conll_files, labels=["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])
    assert dm.sentences("train") is not None  # train has only PER and LOC
    with pytest.raises(DataFileError, match=r"val\.conll: line 2: tag 'B-ORG' is not in the configured labels"):
        dm.setup("fit")


def test_unknown_tag_scheme(tiny_tokenizer_dir):
    with pytest.raises(ValueError, match=r"unknown tag scheme 'IOB': use 'BIO' \(also called IOB2"):
        TokenClassificationDataModule(
            str(tiny_tokenizer_dir), train_file="x.conll", tag_scheme="IOB"  # type: ignore[arg-type]
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"labels": ["B-PER", "I-PER"]}, r"labels=\['B-PER', 'I-PER'\]: need unique BIO tags .* including 'O'"),
        ({"labels": ["O", "E-PER"]}, r"not valid: \['E-PER'\]"),
        ({"max_length": 1}, r"max_length=1"),
        ({"batch_size": 0}, r"batch_size=0"),
    ],
)
def test_bad_arguments(tiny_tokenizer_dir, kwargs, match):
    with pytest.raises(ValueError, match=match):
        TokenClassificationDataModule(str(tiny_tokenizer_dir), train_file="x.conll", **kwargs)


def test_no_source(tiny_tokenizer_dir):
    with pytest.raises(ValueError, match="give train_file"):
        TokenClassificationDataModule(str(tiny_tokenizer_dir))


# ---------------------------------------------------------------- labels and alignment
def test_labels_inferred_from_all_labelled_splits(conll_files, tiny_tokenizer_dir):
    dm = make_dm(tiny_tokenizer_dir, conll_files)
    assert dm.labels == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]



def test_bioes_labels_inferred(tmp_path, tiny_tokenizer_dir):
    path = write(tmp_path / "train.conll", "new\tB-LOC\nyork\tE-LOC\njohn\tS-PER\n")
    dm = TokenClassificationDataModule(str(tiny_tokenizer_dir), train_file=str(path), tag_scheme="BIOES")
    assert dm.labels == ["O", "B-LOC", "I-LOC", "E-LOC", "S-LOC", "B-PER", "I-PER", "E-PER", "S-PER"]


def test_align_first_subtoken_only():
    word_ids = [None, 0, 1, 1, 1, 2, None]
    assert align_labels(word_ids, ["B-PER", "B-LOC", "O"], "BIO") == [None, "B-PER", "B-LOC", None, None, "O", None]


def test_align_all_subtokens_reencodes_spans():
    word_ids = [None, 0, 1, 1, 2, 2, None]
    tags = ["O", "B-LOC", "I-LOC"]
    assert align_labels(word_ids, tags, "BIO", True) == [None, "O", "B-LOC", "I-LOC", "I-LOC", "I-LOC", None]
    assert align_labels([None, 0, 0, 0, 1, None], ["S-PER", "O"], "BIOES", True) == [
        None, "B-PER", "I-PER", "E-PER", "O", None
    ]
    # the entity's last word was cut by truncation: the span ends at the last sub-token kept
    assert align_labels([None, 0, 1, 1, None], ["B-LOC", "I-LOC", "E-LOC"], "BIOES", True) == [
        None, "B-LOC", "I-LOC", "E-LOC", None
    ]


def test_batches_align_labels_to_first_subtokens(conll_files, tiny_tokenizer_dir, tiny_tokenizer):
    dm = make_dm(tiny_tokenizer_dir, conll_files)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert set(batch) >= {"input_ids", "attention_mask", "labels", "word_ids"}
    assert batch["labels"].shape == batch["input_ids"].shape == batch["word_ids"].shape  # (B, T)
    ids = {t: i for i, t in enumerate(dm.labels)}
    # val sentence 0: [CLS] the google team [SEP]: every word is one sub-token
    assert batch["labels"][0, :5].tolist() == [-100, ids["O"], ids["B-ORG"], ids["O"], -100]
    assert batch["word_ids"][0, :5].tolist() == [-1, 0, 1, 2, -1]
    # sentence 1 is shorter: padded with -100 labels and -1 word ids
    assert batch["labels"][1, 3:].tolist() == [-100, -100]
    assert batch["word_ids"][1].tolist() == [-1, 0, -1, -1, -1]


def test_label_all_subtokens_only_changes_training_targets(tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    text = "johnny\tB-PER\nlives\tO\n"
    files = {s: write(tmp_path / f"{s}.conll", text) for s in ("train", "validation", "test")}
    assert len(tiny_tokenizer.tokenize("johnny")) > 1
    dm = make_dm(tiny_tokenizer_dir, files, label_all_subtokens=True)
    dm.setup("fit")
    ids = {t: i for i, t in enumerate(dm.labels)}
    n_sub = len(tiny_tokenizer.tokenize("johnny"))
    train = next(iter(dm.train_dataloader()))["labels"][0].tolist()
    assert train[1 : 2 + n_sub] == [ids["B-PER"]] + [ids["I-PER"]] * (n_sub - 1) + [ids["O"]]
    val = next(iter(dm.val_dataloader()))["labels"][0].tolist()
    assert val[1 : 2 + n_sub] == [ids["B-PER"]] + [-100] * (n_sub - 1) + [ids["O"]]


def test_predict_batches_carry_words(conll_files, tiny_tokenizer_dir):
    dm = make_dm(tiny_tokenizer_dir, conll_files)
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert batch["words"] == [["johnny", "lives", "in", "london"], ["hello"]]
    assert "labels" not in batch


def test_truncation_is_counted(tmp_path, tiny_tokenizer_dir):
    files = {s: write(tmp_path / f"{s}.conll", "john\tB-PER\nlives\tO\nin\tO\nparis\tB-LOC\n")
             for s in ("train", "validation", "test")}
    dm = make_dm(tiny_tokenizer_dir, files, max_length=4)  # [CLS] john lives [SEP]
    dm.setup("fit")
    assert dm.truncated == {"train": 1, "validation": 1}
    assert dm.describe()["sizes"] == {"train": 1, "validation": 1}


def test_hf_dataset_with_classlabel_tags(tmp_path, tiny_tokenizer_dir):
    import datasets

    names = ["O", "B-PER", "I-PER"]
    features = datasets.Features({
        "tokens": datasets.Sequence(datasets.Value("string")),
        "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names)),
    })
    rows = {"tokens": [["john", "lives"], ["mary"]], "ner_tags": [[1, 0], [1]]}
    ds = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict(rows, features=features),
        "validation": datasets.Dataset.from_dict(rows, features=features),
    })
    ds.save_to_disk(str(tmp_path / "ds"))
    dm = TokenClassificationDataModule(str(tiny_tokenizer_dir), dataset_name=str(tmp_path / "ds"),
                                       tags_column="ner_tags")
    dm.setup("fit")
    assert dm.labels == ["O", "B-PER", "I-PER"]
    assert dm.sentences("train")[0].tags == ["B-PER", "O"]
    with pytest.raises(ValueError, match="test needs dataset_name with that split"):
        dm.setup("test")
    bad = TokenClassificationDataModule(str(tiny_tokenizer_dir), dataset_name=str(tmp_path / "ds"))
    with pytest.raises(DataFileError, match=r"no column 'tags'\. Columns found: tokens, ner_tags"):
        bad.setup("fit")


def test_labels_same_for_fit_and_test_stages(conll_files, tiny_tokenizer_dir):
    fit_dm, test_dm = make_dm(tiny_tokenizer_dir, conll_files), make_dm(tiny_tokenizer_dir, conll_files)
    fit_dm.setup("fit")
    test_dm.setup("test")
    assert fit_dm.labels == test_dm.labels
    assert isinstance(next(iter(test_dm.test_dataloader()))["labels"], torch.Tensor)


def test_prepare_wnut16_split_is_seeded_and_never_overwrites(tmp_path):
    import runpy

    script = Path(__file__).resolve().parents[2] / "scripts" / "prepare_wnut16.py"
    main = runpy.run_path(str(script))["main"]
    source = write(tmp_path / "ner.txt", "".join(f"w{i}\tB-PER\nx\tO\n\t\n" for i in range(20)))
    out = tmp_path / "data" / "wnut"
    assert main(["--source", str(source), "--out", str(out), "--seed", "1"]) == 0
    sizes = {s: len(read_conll(out / f"{s}.conll")) for s in ("train", "validation", "test")}
    assert sizes == {"train": 16, "validation": 2, "test": 2}
    first = (out / "test.conll").read_text()
    assert main(["--source", str(source), "--out", str(out), "--seed", "1"]) == 0  # same content: fine
    assert (out / "test.conll").read_text() == first
    with pytest.raises(SystemExit, match="exists with different content"):
        main(["--source", str(source), "--out", str(out), "--seed", "2"])
    with pytest.raises(SystemExit):
        main(["--source", str(source), "--out", str(tmp_path / "elsewhere")])  # only under a data/ directory
