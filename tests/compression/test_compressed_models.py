"""Saving and loading structured-pruned and low-rank models: exact round trips, really smaller, and bad artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

from lit_llm.compression.compressed_models import (
    ManifestError,
    load_low_rank,
    load_pruned,
    save_low_rank,
    save_pruned,
)
from lit_llm.compression.low_rank import LowRankLinear, factorize_model
from lit_llm.compression.pruning import apply_masks, magnitude_masks, measure_sparsity, structured_masks


def _bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
        max_position_embeddings=16, num_labels=3,
    )).eval()


def _inputs() -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory) -> Path:
    model = _bert()
    apply_masks(model, structured_masks(model, heads=0.5, neurons=0.25))
    return save_pruned(model, tmp_path_factory.mktemp("pruned") / "artifact", onnx=False)


@pytest.fixture(scope="module")
def low_rank_dir(tmp_path_factory) -> Path:
    model = _bert()
    factorize_model(model, rank=3)
    return save_low_rank(model, tmp_path_factory.mktemp("low_rank") / "artifact", onnx=False)


def test_pruned_round_trip_is_exact_and_smaller(tmp_path):
    model = _bert()
    apply_masks(model, structured_masks(model, heads=0.5, neurons=0.25, scope="per_layer"))
    with torch.no_grad():
        expected = model(**_inputs()).logits
    before = {k: v.clone() for k, v in model.state_dict().items()}
    save_pruned(model, tmp_path / "a", onnx=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model is untouched
    loaded = load_pruned(tmp_path / "a")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**_inputs()).logits, expected, atol=1e-5, rtol=0)
    for layer in loaded.bert.encoder.layer:  # per_layer: 2 of 4 heads and 30 of 40 neurons in every block
        assert layer.attention.self.query.weight.shape == (16, 32)
        assert layer.attention.self.num_attention_heads == 2
        assert layer.intermediate.dense.weight.shape == (30, 32) and layer.output.dense.weight.shape == (32, 30)
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in _bert().parameters())


def test_low_rank_round_trip_is_exact_and_smaller(low_rank_dir):
    model = _bert()
    factorize_model(model, rank=3)
    loaded = load_low_rank(low_rank_dir)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**_inputs()).logits, model(**_inputs()).logits, atol=1e-6, rtol=0)
    query = loaded.bert.encoder.layer[1].attention.self.query
    assert isinstance(query, LowRankLinear) and query.a.weight.shape == (3, 32)
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in _bert().parameters())


def test_unstructured_gpt2_keeps_its_zeros(tmp_path):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=2, n_positions=16, bos_token_id=0,
                                             eos_token_id=0)).eval()
    masks = magnitude_masks(model, 0.5)
    apply_masks(model, masks)
    save_pruned(model, tmp_path / "gpt2", onnx=False)  # no BERT blocks: saved as it is, with the zeros
    assert json.loads((tmp_path / "gpt2" / "lit_llm_pruning.json").read_text())["layers"] == {}
    loaded = load_pruned(tmp_path / "gpt2")  # lm_head is tied to the embeddings and saved once: loads strictly
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()
    assert measure_sparsity(loaded, masks) == measure_sparsity(model, masks)
    ids = torch.arange(10)[None]
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=0)


def test_existing_artifact_is_never_overwritten(pruned_dir):
    with pytest.raises(FileExistsError, match=r"already holds files"):
        save_pruned(_bert(), pruned_dir, onnx=False)


def test_save_low_rank_of_a_model_without_factors(tmp_path):
    with pytest.raises(ValueError, match=r"has no LowRankLinear layer; factorize it first"):
        save_low_rank(_bert(), tmp_path / "x", onnx=False)


def _copy_with(src: Path, dst: Path, manifest: str, edit) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    if edit is None:
        (dst / manifest).unlink()
    elif isinstance(edit, str):
        (dst / manifest).write_text(edit)
    else:
        data = json.loads((dst / manifest).read_text())
        edit(data)
        (dst / manifest).write_text(json.dumps(data))
    return dst


def _drop_width(d: dict) -> None:
    del d["layers"]["bert.encoder.layer.0"]["intermediate_size"]


def _rename_block(d: dict) -> None:
    d["layers"]["bert.encoder.layer.7"] = d["layers"].pop("bert.encoder.layer.0")


def _more_heads(d: dict) -> None:
    d["layers"]["bert.encoder.layer.0"]["num_attention_heads"] = 3  # the weights hold 2 heads


@pytest.mark.parametrize(
    ("edit", "error", "match"),
    [
        (None, FileNotFoundError, r"lit_llm_pruning.json is missing: .* was not written by lit-llm"),
        ("{not json", ManifestError, r"lit_llm_pruning.json is not valid JSON"),
        (_drop_width, ManifestError,
         r"lit_llm_pruning.json: layers.bert.encoder.layer.0.intermediate_size=None: must be an integer >= 1"),
        (lambda d: d.update(format="other"), ManifestError, r"lit_llm_pruning.json: key 'format' is 'other'"),
        (_rename_block, ManifestError, r"lit_llm_pruning.json: key 'layers': 'bert.encoder.layer.7' is not a "),
        (_more_heads, ManifestError, r"do not fit the model that config.json and lit_llm_pruning.json describe"),
    ],
    ids=["missing", "not_json", "missing_key", "format", "unknown_block", "weights_disagree"],
)
def test_corrupt_pruning_manifest_names_the_file_and_key(pruned_dir, tmp_path, edit, error, match):
    bad = _copy_with(pruned_dir, tmp_path / "bad", "lit_llm_pruning.json", edit)
    with pytest.raises(error, match=match):
        load_pruned(bad)


def _unknown_layer(d: dict) -> None:
    d["layers"]["bert.pooler.nothing"] = d["layers"].pop("bert.encoder.layer.0.attention.self.query")


def _bad_rank(d: dict) -> None:
    d["layers"]["bert.encoder.layer.0.attention.self.query"]["rank"] = "4"


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_bad_rank, r"lit_llm_low_rank.json: layers.bert.encoder.layer.0.attention.self.query.rank='4'"),
        (_unknown_layer, r"lit_llm_low_rank.json: layers.bert.pooler.nothing: BertForSequenceClassification has no "),
        (lambda d: d.update(layers=[1]), r"lit_llm_low_rank.json: key 'layers' must be an object"),
        (lambda d: d.update(version=9), r"lit_llm_low_rank.json: key 'version' is 9"),
    ],
    ids=["rank", "unknown_layer", "layers_type", "version"],
)
def test_corrupt_low_rank_manifest_names_the_file_and_key(low_rank_dir, tmp_path, edit, match):
    bad = _copy_with(low_rank_dir, tmp_path / "bad", "lit_llm_low_rank.json", edit)
    with pytest.raises(ManifestError, match=match):
        load_low_rank(bad)


def test_missing_weights_file_is_named(low_rank_dir, tmp_path):
    bad = _copy_with(low_rank_dir, tmp_path / "bad", "lit_llm_low_rank.json", lambda d: None)
    (bad / "lit_llm_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"holds neither lit_llm_model.safetensors nor model.safetensors"):
        load_low_rank(bad)


@pytest.mark.parametrize("artifact", ["pruned_dir", "low_rank_dir"])
def test_from_pretrained_refuses_an_artifact_it_would_load_wrongly(artifact, request):
    # transformers 5 would re-initialize every reshaped layer at random and only log it; without model.safetensors
    # it refuses, and the error names the directory
    path = request.getfixturevalue(artifact)
    assert not (path / "model.safetensors").exists() and (path / "lit_llm_model.safetensors").is_file()
    with pytest.raises(OSError, match=r"model.safetensors"):
        BertForSequenceClassification.from_pretrained(path)


def test_weights_sharded_by_save_pretrained_load_too(pruned_dir, tmp_path):
    sharded = tmp_path / "sharded"
    load_pruned(pruned_dir).save_pretrained(sharded, max_shard_size="40KB")  # several model-0000x-of-0000y files
    (sharded / "lit_llm_pruning.json").write_bytes((pruned_dir / "lit_llm_pruning.json").read_bytes())
    assert (sharded / "model.safetensors.index.json").is_file()  # save_pretrained's names: the loader takes them too
    loaded, reference = load_pruned(sharded), load_pruned(pruned_dir)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), reference.state_dict().values()))


def test_a_bf16_model_stays_bf16(tmp_path):
    model = _bert().to(torch.bfloat16)
    factorize_model(model, rank=3)
    save_low_rank(model, tmp_path / "bf16", onnx=False)
    loaded = load_low_rank(tmp_path / "bf16")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
