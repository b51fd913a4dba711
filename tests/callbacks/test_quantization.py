"""The Int8Quantization callback: quantize before test, report before/after, QAT during the end of fit."""

from __future__ import annotations

import json
import sys

import lightning.pytorch as pl
import pytest
from compression_helpers import UserClassifier, loader, trainer
from torch import nn

from lit_llm.callbacks import Int8Quantization
from lit_llm.quantization import FakeQuantLinear


@pytest.mark.parametrize("backend", ["torch", "bitsandbytes"])
def test_quantizes_before_test_and_reports_before_after(tmp_path, backend):
    model = UserClassifier()
    t = trainer(tmp_path, [Int8Quantization(backend=backend)], max_steps=3)
    t.fit(model, loader())
    assert type(model.model.bert.encoder.layer[0].output.dense) is nn.Linear  # fit trains the float model
    t.test(model, loader(n=16))
    assert type(model.model.bert.encoder.layer[0].output.dense) is not nn.Linear
    assert type(model.model.classifier) is nn.Linear  # the head is skipped by default
    sections = json.loads((tmp_path / "compression_report.json").read_text())["sections"]
    before, after = sections["int8_float"], sections["int8_quantized"]
    assert after["size_mb"] < before["size_mb"]
    assert after["parameters"] == before["parameters"]
    assert {"latency_ms_bs1", "latency_ms_bs32"} <= set(after)
    assert 0.0 <= after["prediction_agreement"] <= 1.0
    assert after["test/accuracy"] == pytest.approx(t.callback_metrics["test/accuracy"].item())
    assert "| int8_quantized |" in (tmp_path / "compression_report.md").read_text()


def test_quantize_after_fit(tmp_path):
    model = UserClassifier()
    t = trainer(tmp_path, [Int8Quantization(apply_on="fit_end", report=False)], max_steps=2)
    t.fit(model, loader())
    assert type(model.model.bert.encoder.layer[0].output.dense) is not nn.Linear


def test_qat_fake_quant_in_the_last_part_of_training_only(tmp_path):
    seen = []

    class Spy(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            seen.append(any(isinstance(m, FakeQuantLinear) for m in pl_module.modules()))

    model = UserClassifier()
    t = trainer(tmp_path, [Int8Quantization(qat_start=0.5, report=False), Spy()], max_steps=4)
    t.fit(model, loader())
    assert seen == [False, False, True, True]  # steps 0, 1 float; from step 2 = 0.5 * 4 fake-quant
    assert not any(isinstance(m, FakeQuantLinear) for m in model.modules())  # removed at fit end


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"backend": "int4"}, r"backend='int4'"),
        ({"apply_on": "never"}, r"apply_on='never'"),
        ({"qat_start": 1.5}, r"qat_start=1.5"),
        ({"qat_start": -1}, r"qat_start=-1"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Int8Quantization(**kwargs)


def test_bitsandbytes_missing_fails_at_setup_with_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    t = trainer(tmp_path, [Int8Quantization(backend="bitsandbytes")])
    with pytest.raises(ImportError, match=r"pip install 'bitsandbytes>=0.45'"):
        t.fit(UserClassifier(), loader())
