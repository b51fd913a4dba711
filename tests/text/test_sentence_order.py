"""Sentence-order prediction (ALBERT): pairs in document order or swapped, seeded, from the datamodule and YAML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Trainer

from lit_llm.datamodules.corpus import TextCorpusDataModule
from lit_llm.errors import InvalidArgumentError
from lit_llm.modules.masked_lm import MaskedLanguageModel
from lit_llm.text.sentence_order import ORIGINAL_ORDER, SWAPPED, make_sop_pairs


class _Tok:
    cls_token_id, sep_token_id, cls_token, sep_token = 1, 2, "[CLS]", "[SEP]"


def documents(n_docs: int = 60, length: int = 40) -> dict[str, list[list[int]]]:
    # document d holds the increasing ids 1000 * (d + 1) + k, so a segment says where it came from
    ids = [[1000 * (d + 1) + k for k in range(length - d % 7)] for d in range(n_docs)]
    return {"input_ids": ids, "special_tokens_mask": [[0] * len(x) for x in ids],
            "word_starts": [[1] * len(x) for x in ids]}


def test_labels_say_whether_the_pair_is_swapped():
    out = make_sop_pairs(documents(), _Tok(), block_size=23, seed=0)  # segments of 10 tokens
    assert out["input_ids"]
    for row, types, label in zip(out["input_ids"], out["token_type_ids"], out["next_sentence_label"]):
        assert row[0] == 1 and row[-1] == 2 and row.count(2) == 2
        sep = row.index(2)
        a, b = row[1:sep], row[sep + 1 : -1]
        assert a[0] // 1000 == b[0] // 1000  # both segments from one document
        if label == ORIGINAL_ORDER:
            assert a[-1] + 1 == b[0]  # B is the segment right after A
        else:
            assert label == SWAPPED and b[-1] + 1 == a[0]  # A is the segment right after B
        assert types == [0] * (len(a) + 2) + [1] * (len(b) + 1)
        assert len(row) <= 23


def test_swapped_half_the_time_and_seeded():
    labels = make_sop_pairs(documents(), _Tok(), block_size=23, seed=0)["next_sentence_label"]
    assert len(labels) == sum(len(range(0, 40 - d % 7, 10)) - 1 for d in range(60))
    assert 0.4 < sum(labels) / len(labels) < 0.6
    assert make_sop_pairs(documents(), _Tok(), block_size=23, seed=0)["next_sentence_label"] == labels
    assert make_sop_pairs(documents(), _Tok(), block_size=23, seed=1)["next_sentence_label"] != labels


def test_a_short_document_is_cut_in_two_halves():
    cols = {"input_ids": [[11, 12, 13, 14, 15], [7]], "special_tokens_mask": [[0] * 5, [0]],
            "word_starts": [[1, 0, 1, 0, 1], [1]]}
    out = make_sop_pairs(cols, _Tok(), block_size=23, seed=0)
    assert len(out["input_ids"]) == 1  # the one-token document makes no pair
    row, label = out["input_ids"][0], out["next_sentence_label"][0]
    assert row == ([1, 11, 12, 2, 13, 14, 15, 2] if label == ORIGINAL_ORDER else [1, 13, 14, 15, 2, 11, 12, 2])
    # a segment cut inside a word starts a word of its own; specials are never word starts
    assert out["word_starts"][0] == ([0, 1, 0, 0, 1, 0, 1, 0] if label == ORIGINAL_ORDER else [0, 1, 0, 1, 0, 1, 0, 0])


def test_tokenizer_without_cls_sep():
    class NoCls(_Tok):
        cls_token_id, cls_token = None, None

    with pytest.raises(ValueError, match=r"sentence-order prediction needs a tokenizer with \[CLS\] and \[SEP\]"):
        make_sop_pairs(documents(2), NoCls(), block_size=23, seed=0)


DOCS = [f"the movie {i} was really good and the story of john in paris was great . the end of it" for i in range(24)]


def write_corpus(tmp_path: Path) -> str:
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    return str(path)


def test_datamodule_builds_sentence_order_pairs(tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    dm = TextCorpusDataModule(data_files=write_corpus(tmp_path), tokenizer=str(tiny_tokenizer_dir), nsp=True,
                              nsp_negatives="swapped", block_size=13, val_fraction=0.0, batch_size=4,
                              cache_dir=str(tmp_path / "hf"))
    dm.setup("fit")
    labels = dm.train_dataset["next_sentence_label"]
    assert 0.3 < sum(labels) / len(labels) < 0.7
    docs = [tiny_tokenizer(d, add_special_tokens=False)["input_ids"] for d in DOCS]

    def in_a_document(ids: list[int]) -> bool:
        return any(doc[i : i + len(ids)] == ids for doc in docs for i in range(len(doc)))

    for row, label in zip(dm.train_dataset["input_ids"], labels):
        sep = row.index(tiny_tokenizer.sep_token_id)
        a, b = row[1:sep], row[sep + 1 : -1]
        # in document order, A then B is a stretch of a document; swapped, B then A is
        assert in_a_document(a + b if label == ORIGINAL_ORDER else b + a)


def test_argument_errors(tiny_bert_dir):
    with pytest.raises(InvalidArgumentError, match=r"nsp_negatives='swapped' is an option of .* set nsp=True"):
        TextCorpusDataModule(data_files="x.txt", tokenizer="t", nsp_negatives="swapped")
    with pytest.raises(InvalidArgumentError, match=r"nsp_negatives='order': choose 'random'"):
        TextCorpusDataModule(data_files="x.txt", tokenizer="t", nsp=True, nsp_negatives="order")  # type: ignore
    with pytest.raises(InvalidArgumentError, match=r"nsp_negatives='swapped' is an option of .* set nsp=True"):
        MaskedLanguageModel(model=str(tiny_bert_dir), nsp_negatives="swapped")
    with pytest.raises(InvalidArgumentError, match=r"nsp_negatives='order': choose 'random'"):
        MaskedLanguageModel(model=str(tiny_bert_dir), nsp=True, nsp_negatives="order")  # type: ignore[arg-type]


def _trainer(tmp_path: Path) -> Trainer:
    return Trainer(accelerator="cpu", devices=1, max_steps=2, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                   num_sanity_val_steps=0, limit_val_batches=0)


def test_module_refuses_pairs_of_the_other_kind(tmp_path, tiny_bert_dir, tiny_tokenizer_dir):
    dm = TextCorpusDataModule(data_files=write_corpus(tmp_path), tokenizer=str(tiny_tokenizer_dir), nsp=True,
                              block_size=13, val_fraction=0.0, batch_size=4, cache_dir=str(tmp_path / "hf"))
    mlm = MaskedLanguageModel(model=str(tiny_bert_dir), nsp=True, nsp_negatives="swapped", export=False)
    with pytest.raises(InvalidArgumentError, match=r"nsp_negatives='swapped'\) but the datamodule builds "
                                                   r"nsp_negatives='random' pairs"):
        _trainer(tmp_path).fit(mlm, dm)


def test_sentence_order_from_yaml(tmp_path, tiny_tokenizer_dir):
    from lit_llm.cli import LitLLMCLI

    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 2, "logger": False, "limit_val_batches": 0,
                    "enable_progress_bar": False, "enable_model_summary": False, "enable_checkpointing": False},
        "model": {"class_path": "lit_llm.modules.MaskedLanguageModel", "init_args": {
            "model": {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                      "intermediate_size": 37, "max_position_embeddings": 64},
            "tokenizer": str(tiny_tokenizer_dir), "nsp": True, "nsp_negatives": "swapped", "export": False}},
        "data": {"class_path": "lit_llm.datamodules.TextCorpusDataModule", "init_args": {
            "data_files": write_corpus(tmp_path), "tokenizer": str(tiny_tokenizer_dir), "nsp": True,
            "nsp_negatives": "swapped", "block_size": 13, "val_fraction": 0.0, "batch_size": 4,
            "cache_dir": str(tmp_path / "hf")}},
    }
    path = tmp_path / "sop.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = LitLLMCLI(args=["fit", "--config", str(path), "--run_root", str(tmp_path / "runs")])
    assert cli.model.nsp_negatives == cli.datamodule.nsp_negatives == "swapped"
    metrics = cli.trainer.callback_metrics
    assert "train/sop_loss" in metrics and "train/sop_accuracy" in metrics and "train/nsp_loss" not in metrics
    assert torch.isfinite(metrics["train/sop_loss"])
