"""The LowRankFactorization callback: factorized before training, trained, resumed, reported."""

from __future__ import annotations

import json

import pytest
import torch
from compression_helpers import UserClassifier, loader, trainer

from lit_llm.callbacks import LowRankFactorization
from lit_llm.low_rank import LowRankLinear


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
    t = trainer(tmp_path, [LowRankFactorization(energy=0.5, report=False)], max_steps=2)
    t.fit(model, loader())
    t.save_checkpoint(tmp_path / "lr.ckpt")
    resumed = UserClassifier()
    t2 = trainer(tmp_path, [LowRankFactorization(energy=0.5, report=False)], max_steps=2)
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
