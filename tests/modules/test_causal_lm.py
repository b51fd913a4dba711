"""CausalLanguageModel: trains on packed blocks, perplexity, generation, from scratch with a BPE tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from lit_llm.datamodules.corpus import TextCorpusDataModule
from lit_llm.modules.causal_lm import CausalLanguageModel

DOCS = [f"the film {i} was good and the story of mary in london was great . the end" for i in range(24)]


def setup_data(tmp_path: Path, **kwargs) -> TextCorpusDataModule:
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    return TextCorpusDataModule(data_files=str(path), batch_size=4, block_size=32, val_fraction=0.2,
                                cache_dir=str(tmp_path / "hf"), **kwargs)


def trainer(tmp_path: Path, **kwargs) -> Trainer:
    kwargs.setdefault("max_steps", 3)
    return Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                   num_sanity_val_steps=0, **kwargs)


def test_train_validate_generate(tmp_path, tiny_gpt2_dir, tiny_tokenizer_dir):
    lm = CausalLanguageModel(model=str(tiny_gpt2_dir), max_new_tokens=4)
    t = trainer(tmp_path, val_check_interval=3)
    t.fit(lm, setup_data(tmp_path, tokenizer=str(tiny_tokenizer_dir)))
    m = t.callback_metrics
    assert {"train/loss", "train/perplexity", "val/loss", "val/perplexity", "val/accuracy"} <= set(m)
    assert m["val/perplexity"] == pytest.approx(float(torch.exp(m["val/loss"])), rel=1e-5)
    assert (lm.export_path / "model.safetensors").exists()
    out = t.predict(lm, DataLoader(["the movie", "john is"], batch_size=2, collate_fn=list))
    assert [r["prompt"] for r in out[0]] == ["the movie", "john is"]
    assert all(isinstance(r["generated"], str) for r in out[0])
    # greedy decoding is deterministic
    assert lm.generate(["the movie"]) == lm.generate(["the movie"])


def test_loss_matches_hf_on_padded_batch(tiny_gpt2_dir):
    lm = CausalLanguageModel(model=str(tiny_gpt2_dir), export=False)
    ids = torch.tensor([[2, 40, 41, 42, 3], [2, 43, 44, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    loss_sum, count, _, _ = lm._loss({"input_ids": ids, "attention_mask": mask}, "val")
    assert count.item() == 4 + 2  # next-token targets, none on padding
    labels = ids.masked_fill(mask == 0, -100)
    hf = lm.model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert (loss_sum / count).item() == pytest.approx(hf.item(), rel=1e-5)


def test_from_scratch_with_bpe_tokenizer(tmp_path):
    config = {"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 64}
    lm = CausalLanguageModel(model=config, export=False)
    data = setup_data(tmp_path, train_tokenizer="bpe", vocab_size=300)
    trainer(tmp_path, max_steps=2).fit(lm, data)
    assert lm.model.config.vocab_size == len(data.tokenizer)
    assert lm.tokenizer.eos_token == "<|endoftext|>"


def test_generation_argument_errors(tiny_gpt2_dir):
    with pytest.raises(ValueError, match=r"max_new_tokens=0 must be >= 1"):
        CausalLanguageModel(model=str(tiny_gpt2_dir), max_new_tokens=0)
    with pytest.raises(ValueError, match=r"temperature=0.0 must be > 0"):
        CausalLanguageModel(model=str(tiny_gpt2_dir), temperature=0.0)
    with pytest.raises(ValueError, match=r"top_p=1.5 must be in \(0, 1\]"):
        CausalLanguageModel(model=str(tiny_gpt2_dir), top_p=1.5)


def test_block_size_over_positions(tmp_path, tiny_tokenizer_dir):
    config = {"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 16}
    lm = CausalLanguageModel(model=config, tokenizer=str(tiny_tokenizer_dir), export=False)
    with pytest.raises(ValueError, match=r"block_size=32 is larger than the model's maximum positions \(16"):
        trainer(tmp_path).fit(lm, setup_data(tmp_path, tokenizer=str(tiny_tokenizer_dir)))
