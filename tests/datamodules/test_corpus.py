"""TextCorpusDataModule: file kinds, packing, caching, streaming shards, trained tokenizers, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

from lit_llm.datamodules.corpus import StreamingBlocks, TextCorpusDataModule, stream_documents
from lit_llm.datamodules.packing import collate_blocks, pack_blocks, tokenize_documents

DOCS = [
    f"the movie {i} was really good and the story of john in paris was great . {'music ' * (i % 5)}the end"
    for i in range(40)
]


def write_jsonl(path: Path, docs=DOCS, field: str = "text") -> Path:
    with path.open("w") as f:
        for i, doc in enumerate(docs):
            f.write(json.dumps({"title": f"t{i}", field: doc}) + "\n")
    return path


def make_dm(tmp_path: Path, tokenizer: str, **kwargs) -> TextCorpusDataModule:
    if "data_files" not in kwargs:
        kwargs["data_files"] = str(write_jsonl(tmp_path / "corpus.jsonl"))
    kwargs.setdefault("block_size", 16)
    kwargs.setdefault("batch_size", 4)
    kwargs.setdefault("cache_dir", str(tmp_path / "hf_cache"))
    return TextCorpusDataModule(tokenizer=tokenizer, **kwargs)


def test_tokenize_documents_and_pack_blocks(tiny_tokenizer):
    cols = tokenize_documents(["good movie", "", "bad film"], tiny_tokenizer)
    cls, sep = tiny_tokenizer.cls_token_id, tiny_tokenizer.sep_token_id
    assert cols["input_ids"][0][0] == cls and cols["input_ids"][0][-1] == sep
    assert cols["input_ids"][1] == []  # an empty line is no document
    assert cols["special_tokens_mask"][0] == [1, 0, 0, 1]
    assert cols["word_starts"][0] == [0, 1, 1, 0]
    packed = pack_blocks(cols, block_size=3)
    # 8 tokens -> two full blocks of 3, tail of 2 dropped, no padding anywhere
    assert packed["input_ids"] == [cols["input_ids"][0][:3], [cols["input_ids"][0][3], *cols["input_ids"][2][:2]]]


def test_packed_jsonl_blocks(tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    dm = make_dm(tmp_path, str(tiny_tokenizer_dir), val_fraction=0.1)
    dm.prepare_data()
    dm.setup("fit")
    expected_train = sum(len(tiny_tokenizer(d)["input_ids"]) for i, d in enumerate(DOCS) if i % 10)
    assert len(dm.train_dataset) == expected_train // 16  # one map batch: only the last tail is dropped
    assert len(dm.val_dataset) == sum(len(tiny_tokenizer(DOCS[i])["input_ids"]) for i in (0, 10, 20, 30)) // 16
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (4, 16)
    assert batch["attention_mask"].all()
    assert set(batch) == {"input_ids", "attention_mask", "special_tokens_mask", "word_starts"}
    # the separators between packed documents are marked special, so they are never masked
    sep = tiny_tokenizer.sep_token_id
    assert (batch["special_tokens_mask"][batch["input_ids"] == sep] == 1).all()


@pytest.mark.parametrize("kind", ["txt", "csv", "glob"])
def test_file_kinds(tmp_path, tiny_tokenizer_dir, kind):
    if kind == "txt":
        (tmp_path / "c.txt").write_text("\n".join(DOCS) + "\n")
        files = str(tmp_path / "c.txt")
    elif kind == "csv":
        (tmp_path / "c.csv").write_text("text,label\n" + "\n".join(f"{d},1" for d in DOCS) + "\n")
        files = str(tmp_path / "c.csv")
    else:
        write_jsonl(tmp_path / "a.jsonl", DOCS[:20])
        write_jsonl(tmp_path / "b.jsonl", DOCS[20:])
        files = str(tmp_path / "*.jsonl")
    dm = make_dm(tmp_path, str(tiny_tokenizer_dir), data_files=files, val_fraction=0.0)
    dm.setup("fit")
    assert dm.val_dataset is None
    assert len(dm.train_dataset) > 20


def test_truncation_mode_pads(tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    dm = make_dm(tmp_path, str(tiny_tokenizer_dir), packing=False, block_size=12, val_fraction=0.0)
    dm.setup("fit")
    assert len(dm.train_dataset) == len(DOCS)
    rows = [dm.train_dataset[i] for i in range(3)]
    assert all(len(r["input_ids"]) <= 12 for r in rows)
    batch = collate_blocks([{k: v[:n] for k, v in rows[0].items()} for n in (5, 3)], tiny_tokenizer.pad_token_id)
    assert batch["attention_mask"].tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
    assert batch["special_tokens_mask"][1, 3:].tolist() == [1, 1]  # padding is never masked
    assert batch["input_ids"][1, 3:].tolist() == [tiny_tokenizer.pad_token_id] * 2


def test_tokenization_cache_reused(tmp_path, tiny_tokenizer_dir):
    files_arg = str(write_jsonl(tmp_path / "corpus.jsonl"))
    first = make_dm(tmp_path, str(tiny_tokenizer_dir), data_files=files_arg)
    first.setup("fit")
    files = {f["filename"] for f in first.train_dataset.cache_files}
    assert files and all(Path(f).exists() for f in files)
    mtimes = {f: os.stat(f).st_mtime_ns for f in files}
    second = make_dm(tmp_path, str(tiny_tokenizer_dir), data_files=files_arg)
    second.setup("fit")
    # the same cache files, not rewritten: a fresh datamodule found the earlier tokenization by fingerprint
    assert {f["filename"] for f in second.train_dataset.cache_files} == files
    assert {f: os.stat(f).st_mtime_ns for f in files} == mtimes
    assert second.train_dataset[0] == first.train_dataset[0]


def test_streaming_ranks_and_workers_read_each_document_once(tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    files = [str(write_jsonl(tmp_path / f"part{f}.jsonl", DOCS[f::4])) for f in range(4)]
    dm = make_dm(tmp_path, str(tiny_tokenizer_dir), data_files=files, streaming=True, val_fraction=0.0)
    raw = dm._load_raw(streaming=True)
    seen: list[str] = []
    for rank in range(2):  # 2 ranks x 2 workers: each worker reads one of the 4 files
        docs = stream_documents(raw, "text", rank=rank, world_size=2, seed=0)
        ds = StreamingBlocks(docs, "text", tiny_tokenizer, 64, packing=False)
        seen.extend(tiny_tokenizer.decode(ex["input_ids"], skip_special_tokens=True)
                    for ex in DataLoader(ds, batch_size=None, num_workers=2))
    expected = [tiny_tokenizer.decode(tiny_tokenizer(d)["input_ids"], skip_special_tokens=True) for d in DOCS]
    assert sorted(seen) == sorted(expected)  # none duplicated, none dropped


def test_streaming_packed_batches(tmp_path, tiny_tokenizer_dir):
    dm = make_dm(tmp_path, str(tiny_tokenizer_dir), streaming=True)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (4, 16)


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_trained_tokenizer_saved_next_to_checkpoints(tmp_path, kind):
    from lightning.pytorch import Trainer
    from transformers import AutoTokenizer

    trainer = Trainer(default_root_dir=tmp_path / "run", logger=False, accelerator="cpu")
    dm = TextCorpusDataModule(data_files=str(write_jsonl(tmp_path / "c.jsonl")), train_tokenizer=kind,
                              vocab_size=300, block_size=16, cache_dir=str(tmp_path / "hf"))
    dm.trainer = trainer
    dm.prepare_data()
    dm.setup("fit")
    saved = AutoTokenizer.from_pretrained(tmp_path / "run" / "tokenizer")
    assert saved.mask_token is not None and len(saved) == len(dm.tokenizer)
    assert dm.train_dataset[0]["input_ids"][:4] == dm.tokenizer(DOCS[1])["input_ids"][:4]


def test_nsp_pairs(tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    dm = make_dm(tmp_path, str(tiny_tokenizer_dir), nsp=True, block_size=13, val_fraction=0.0)
    dm.setup("fit")
    labels = dm.train_dataset["next_sentence_label"]
    assert 0.3 < sum(labels) / len(labels) < 0.7  # about half random
    batch = next(iter(dm.train_dataloader()))
    row = batch["input_ids"][0].tolist()
    assert row[0] == tiny_tokenizer.cls_token_id and row.count(tiny_tokenizer.sep_token_id) == 2
    types = batch["token_type_ids"][0][batch["attention_mask"][0] == 1].tolist()
    assert types == sorted(types) and types[-1] == 1 and batch["input_ids"].shape[1] <= 13


# -- bad input -----------------------------------------------------------------------------------------------
def test_empty_corpus(tmp_path, tiny_tokenizer_dir):
    (tmp_path / "empty.jsonl").write_text("")
    dm = make_dm(tmp_path, str(tiny_tokenizer_dir), data_files=str(tmp_path / "empty.jsonl"))
    with pytest.raises(ValueError, match=r"empty.jsonl.*is empty: it holds no document"):
        dm.setup("fit")


def test_corpus_shorter_than_one_block(tmp_path, tiny_tokenizer_dir):
    dm = make_dm(tmp_path, str(tiny_tokenizer_dir), data_files=str(write_jsonl(tmp_path / "s.jsonl", ["good movie"])),
                 val_fraction=0.0)
    with pytest.raises(ValueError, match=r"s.jsonl.*no training block of block_size=16.*shorter than one block"):
        dm.setup("fit")


def test_missing_text_field_lists_fields(tmp_path, tiny_tokenizer_dir):
    dm = make_dm(tmp_path, str(tiny_tokenizer_dir), text_field="body")
    with pytest.raises(KeyError, match=r"text_field='body'.*fields are \['title', 'text'\]"):
        dm.setup("fit")


def test_no_matching_file(tmp_path, tiny_tokenizer_dir):
    dm = make_dm(tmp_path, str(tiny_tokenizer_dir), data_files=str(tmp_path / "nope*.jsonl"))
    with pytest.raises(FileNotFoundError, match=r"nope\*.jsonl' matches no file"):
        dm.setup("fit")


def test_block_size_over_tokenizer_limit(tmp_path, tiny_tokenizer_dir):
    dm = make_dm(tmp_path, str(tiny_tokenizer_dir), block_size=256)
    with pytest.raises(ValueError, match=r"block_size=256 is larger than the tokenizer's model_max_length=128"):
        dm.setup("fit")


def test_argument_errors():
    with pytest.raises(ValueError, match=r"data_files=None, dataset_name=None\): give exactly one"):
        TextCorpusDataModule(tokenizer="x")
    with pytest.raises(ValueError, match=r"tokenizer=None, train_tokenizer=None"):
        TextCorpusDataModule(data_files="x.txt")
    with pytest.raises(ValueError, match=r"val_fraction=0.7"):
        TextCorpusDataModule(data_files="x.txt", tokenizer="t", val_fraction=0.7)


def test_dataset_name_local_parquet_dir(tmp_path, tiny_tokenizer_dir):
    import pandas as pd

    folder = tmp_path / "my_dataset"
    folder.mkdir()
    pd.DataFrame({"body": DOCS}).to_parquet(folder / "train.parquet")
    dm = TextCorpusDataModule(dataset_name=str(folder), text_field="body", tokenizer=str(tiny_tokenizer_dir),
                              block_size=16, val_fraction=0.0, cache_dir=str(tmp_path / "hf"))
    dm.setup("fit")
    assert len(dm.train_dataset) > 20
