"""Every compression callback is configurable from YAML / the CLI (jsonargparse reads the typed signatures)."""

from __future__ import annotations

import pytest
from jsonargparse import ArgumentParser
from lightning.pytorch.callbacks import Callback

from lit_llm.callbacks import DistillationTeacher, Int8Quantization, LowRankFactorization, Pruning

CASES = [
    ({"class_path": "lit_llm.callbacks.Pruning",
      "init_args": {"amount": 0.8, "start_step": 10, "end_step": 100, "mode": "heads", "scope": "per_layer"}},
     Pruning, {"amount": 0.8, "end_step": 100, "mode": "heads"}),
    ({"class_path": "lit_llm.callbacks.Int8Quantization", "init_args": {"backend": "bitsandbytes", "qat_start": 0.8}},
     Int8Quantization, {"backend": "bitsandbytes", "qat_start": 0.8}),
    ({"class_path": "lit_llm.callbacks.DistillationTeacher",
      "init_args": {"teacher": "runs/teacher/export", "alpha": 0.7, "hidden_layers": {0: 1, 1: 3}}},
     DistillationTeacher, {"teacher_spec": "runs/teacher/export", "alpha": 0.7, "hidden_layers": {0: 1, 1: 3}}),
    ({"class_path": "lit_llm.callbacks.LowRankFactorization", "init_args": {"energy": 0.9}},
     LowRankFactorization, {"energy": 0.9, "rank": None}),
]


@pytest.mark.parametrize(("config", "cls", "expected"), CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_callback_from_config(config, cls, expected):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(Callback, "callback")
    callback = parser.instantiate(parser.parse_object({"callback": config})).callback
    assert isinstance(callback, cls)
    for key, value in expected.items():
        assert getattr(callback, key) == value


def test_bad_value_from_config_is_reported():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(Callback, "callback")
    config = {"callback": {"class_path": "lit_llm.callbacks.Pruning", "init_args": {"amount": 1.2}}}
    with pytest.raises(ValueError, match=r"Pruning\(amount=1.2\)"):
        parser.instantiate(parser.parse_object(config))
