"""The LowRankFactorization callback: factorized before training, trained, resumed, reported, the artifact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from artifact_helpers import example_inputs, in_memory_logits, load_in_fresh_process, onnx_logits_in_fresh_process
from compression_helpers import UserClassifier, loader, tiny_config, trainer
from transformers import BertForSequenceClassification

from lit_llm.callbacks import LowRankFactorization
from lit_llm.compression.low_rank import LowRankLinear


def test_factorizes_before_the_optimizer_and_trains_the_factors(tmp_path):
    model = UserClassifier()
    dense_params = sum(p.numel() for p in model.parameters())
    t = trainer(tmp_path, [LowRankFactorization(rank=4)], max_steps=3)
    t.fit(model, loader())
    query = model.model.bert.encoder.layer[0].attention.self.query
    assert isinstance(query, LowRankLinear) and query.rank == 4
    optimized = {id(p) for g in t.optimizers[0].param_groups for p in g["params"]}
    assert id(query.a.weight) in optimized  # the optimizer was built on the factors
    assert sum(p.numel() for p in model.parameters()) < dense_params
    sections = json.loads((tmp_path / "compression_report.json").read_text())["sections"]
    assert sections["low_rank_factorized"]["parameters"] < sections["low_rank_dense"]["parameters"]
    assert sections["low_rank_factorized"]["layers_factorized"] == 12
    assert "latency_ms_bs32" in sections["low_rank_factorized"]


def test_resume_loads_the_factors(tmp_path):
    model = UserClassifier()
    t = trainer(tmp_path, [LowRankFactorization(energy=0.5, report=False, export_artifact=False)], max_steps=2)
    t.fit(model, loader())
    t.save_checkpoint(tmp_path / "lr.ckpt")
    resumed = UserClassifier()
    t2 = trainer(tmp_path, [LowRankFactorization(energy=0.5, report=False, export_artifact=False)], max_steps=2)
    t2.fit(resumed, loader(), ckpt_path=tmp_path / "lr.ckpt")  # already at max_steps: only restores
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({}, r"give exactly one"), ({"rank": 0}, r"rank=0"), ({"energy": 0.0}, r"energy=0.0")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LowRankFactorization(**kwargs)


def test_pattern_that_matches_nothing(tmp_path):
    t = trainer(tmp_path, [LowRankFactorization(rank=2, patterns=[r"decoder"])])
    with pytest.raises(ValueError, match=r"match no Linear layer of UserClassifier"):
        t.fit(UserClassifier(), loader())


def test_works_when_the_module_builds_its_model_in_setup(tmp_path):
    from compression_helpers import LazyClassifier

    model = LazyClassifier()
    t = trainer(tmp_path, [LowRankFactorization(rank=4, report=False)], max_steps=2)
    t.fit(model, loader())
    assert isinstance(model.model.bert.encoder.layer[1].output.dense, LowRankLinear)
    assert "configure_model" not in model.__dict__  # unwrapped at teardown


def test_artifact_keeps_the_factors_and_loads_in_a_fresh_process(tmp_path):
    cb = LowRankFactorization(rank=4)
    model = UserClassifier()
    trainer(tmp_path, [cb], max_steps=3).fit(model, loader())
    artifact = tmp_path / "export-low-rank"  # the default: <default_root_dir>/export-low-rank
    assert cb.artifact_path == artifact
    inputs = example_inputs()
    expected = in_memory_logits(model.model, inputs)

    loaded = load_in_fresh_process("load_low_rank", artifact, inputs, tmp_path)
    np.testing.assert_allclose(loaded["logits"], expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(onnx_logits_in_fresh_process(artifact, inputs, tmp_path), expected, atol=1e-4, rtol=0)

    manifest = json.loads((artifact / "lit_llm_low_rank.json").read_text())
    assert len(manifest["layers"]) == 12 and {e["rank"] for e in manifest["layers"].values()} == {4}
    for name, entry in manifest["layers"].items():  # the factors, not a merged (out, in) weight
        assert loaded["shapes"][f"{name}.a.weight"] == [4, entry["in_features"]]
        assert loaded["shapes"][f"{name}.b.weight"] == [entry["out_features"], 4]
        assert f"{name}.weight" not in loaded["shapes"]
    dense = BertForSequenceClassification(tiny_config())
    assert loaded["parameters"] == manifest["parameters"] == sum(p.numel() for p in model.model.parameters())
    assert loaded["parameters"] < manifest["dense_parameters"] == sum(p.numel() for p in dense.parameters())
    dense.save_pretrained(tmp_path / "dense")
    dense_bytes = (tmp_path / "dense" / "model.safetensors").stat().st_size
    assert (artifact / "lit_llm_model.safetensors").stat().st_size < 0.8 * dense_bytes
    report = json.loads((tmp_path / "compression_report.json").read_text())["sections"]["low_rank_artifact"]
    assert report["parameters"] == manifest["parameters"] and report["onnx_bytes"] > 0


def test_artifact_directory_that_holds_files_is_refused_before_training(tmp_path):
    (tmp_path / "export-low-rank").mkdir()
    (tmp_path / "export-low-rank" / "keep.txt").write_text("earlier run")
    t, model = trainer(tmp_path, [LowRankFactorization(rank=4)]), UserClassifier()
    with pytest.raises(FileExistsError, match=r"LowRankFactorization: artifact directory .* already holds files"):
        t.fit(model, loader())
    assert t.global_step == 0 and (tmp_path / "export-low-rank" / "keep.txt").read_text() == "earlier run"
    assert "configure_model" not in model.__dict__  # unwrapped after the failed fit too


def test_module_without_the_hf_model_attribute_is_refused_before_training(tmp_path):
    t = trainer(tmp_path, [LowRankFactorization(rank=4, model_attr="backbone")])
    with pytest.raises(AttributeError, match=r"LowRankFactorization: .*UserClassifier\.backbone, which holds nothing"):
        t.fit(UserClassifier(), loader())
    assert t.global_step == 0


def test_a_rank_that_factorizes_nothing_fails_before_training(tmp_path):
    # hidden 32: a 32 x 32 layer gets smaller only below rank 16; rank 20 would make every layer bigger
    t = trainer(tmp_path, [LowRankFactorization(rank=20, report=False, export_artifact=False)], max_steps=2)
    with pytest.raises(ValueError, match=r"LowRankFactorization\(rank=20\): no Linear layer was factorized"):
        t.fit(UserClassifier(), loader())
    assert t.global_step == 0
