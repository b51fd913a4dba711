"""The Int8Quantization callback: the int8 artifact written at fit end, test on its kernels, QAT, bad inputs."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap

import lightning.pytorch as pl
import pytest
import torch
from compression_helpers import UserClassifier, loader, trainer
from torch import nn

import lit_llm.callbacks.quantization as quantization_callback
from lit_llm.callbacks import Int8Quantization
from lit_llm.compression.quantization import FakeQuantLinear
from lit_llm.compression.quantized_artifacts import INT8_ONNX_FILE, OnnxRuntimeModel, export_bf16, load_int8_onnx

TEXTS = ["a good movie", "the worst film and a boring plot", "fun", "i loved the acting but not the ending"]

# Run in a fresh interpreter: only onnxruntime, transformers' AutoTokenizer / AutoModel and torch, no lit_llm.
SERVE = textwrap.dedent(
    """
    import json, sys
    import numpy as np, onnxruntime, torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    int8_dir, bf16_dir, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    tokenizer = AutoTokenizer.from_pretrained(int8_dir)
    session = onnxruntime.InferenceSession(f"{int8_dir}/model.int8.onnx", providers=["CPUExecutionProvider"])
    enc = tokenizer(texts, padding=True, return_tensors="np")
    feed = {i.name: enc[i.name].astype(np.int64) for i in session.get_inputs()}
    (int8,) = session.run(["logits"], feed)
    bf16_model = AutoModelForSequenceClassification.from_pretrained(bf16_dir, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        bf16 = bf16_model(**AutoTokenizer.from_pretrained(bf16_dir)(texts, padding=True, return_tensors="pt")).logits
    print(json.dumps({"int8": int8.tolist(), "bf16": bf16.float().tolist()}))
    """
)


class TokenizedClassifier(UserClassifier):
    """A user's module holding its tokenizer, as the artifact wants (the vocabulary sized to it)."""

    def __init__(self, tokenizer) -> None:
        super().__init__(vocab_size=len(tokenizer))
        self.tokenizer = tokenizer


@pytest.mark.slow
def test_fit_writes_an_int8_artifact_a_fresh_process_serves_like_the_in_memory_int8_model(
    tmp_path, tiny_tokenizer, monkeypatch
):
    said = []
    monkeypatch.setattr(quantization_callback, "rank_zero_info", said.append)
    model = TokenizedClassifier(tiny_tokenizer)
    callback = Int8Quantization()
    t = trainer(tmp_path, [callback], max_steps=3)
    t.fit(model, loader())
    artifact = tmp_path / "export-int8"
    assert callback.artifact_path == artifact and (artifact / INT8_ONNX_FILE).is_file()
    assert any(f"written to {artifact}" in line for line in said)  # the user is told where it is
    float_model = copy.deepcopy(model.model).eval()
    bf16_dir = export_bf16(float_model, tmp_path / "export-bf16", tiny_tokenizer)

    t.test(model, loader(n=16))  # the artifact's session evaluates the test set
    assert isinstance(model.model, OnnxRuntimeModel)
    assert any(f"the artifact in {artifact}" in line for line in said)
    enc = tiny_tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        int8_memory = model.model(**enc).logits
        fp32 = float_model(**enc).logits
        bf16_memory = copy.deepcopy(float_model).to(torch.bfloat16)(**enc).logits.float()

    served = json.loads(
        subprocess.run(
            [sys.executable, "-c", SERVE, str(artifact), str(bf16_dir), json.dumps(TEXTS)],
            capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
        ).stdout.splitlines()[-1]
    )
    int8_served, bf16_served = torch.tensor(served["int8"]), torch.tensor(served["bf16"])
    # Same file, same kernels: only float reductions outside the int8 MatMuls may be ordered differently across
    # thread counts, so a 1e-4 tolerance on logits of magnitude ~1 is far below any quantization effect.
    torch.testing.assert_close(int8_served, int8_memory, atol=1e-4, rtol=1e-4)
    assert torch.equal(int8_served.argmax(-1), int8_memory.argmax(-1))
    torch.testing.assert_close(bf16_served, bf16_memory, atol=1e-2, rtol=0)
    assert torch.equal(bf16_served.argmax(-1), bf16_memory.argmax(-1))
    # fp32 vs int8: the quantization error itself, reported by the callback and bounded here
    assert (int8_memory - fp32).abs().max() < 0.1
    sections = json.loads((tmp_path / "compression_report.json").read_text())["sections"]
    before, after = sections["int8_float"], sections["int8_quantized"]
    assert after["artifact"] == str(artifact) and after["layers"] == 2 * 6
    assert after["parameters"] == before["parameters"]
    assert {"latency_ms_bs1", "latency_ms_bs32"} <= set(after)
    assert 0.0 <= after["prediction_agreement"] <= 1.0
    assert after["test/accuracy"] == pytest.approx(t.callback_metrics["test/accuracy"].item())


def test_bitsandbytes_backend_quantizes_in_place_and_writes_an_hf_artifact(tmp_path, tiny_tokenizer):
    pytest.importorskip("accelerate")
    model = TokenizedClassifier(tiny_tokenizer)
    t = trainer(tmp_path, [Int8Quantization(backend="bitsandbytes")], max_steps=2)
    t.fit(model, loader())
    assert type(model.model.bert.encoder.layer[0].output.dense) is nn.Linear  # fit trains the float model
    config = json.loads((tmp_path / "export-int8" / "config.json").read_text())
    assert config["quantization_config"]["load_in_8bit"] is True
    t.test(model, loader(n=16))
    assert type(model.model.bert.encoder.layer[0].output.dense).__name__ == "Linear8bitLt"
    assert type(model.model.classifier) is nn.Linear  # the head is skipped by default
    after = json.loads((tmp_path / "compression_report.json").read_text())["sections"]["int8_quantized"]
    assert 0.0 <= after["prediction_agreement"] <= 1.0


def test_artifact_holds_the_weights_the_module_ends_fit_with(tmp_path, monkeypatch):
    # Our modules restore their best checkpoint in their own on_fit_end, after the callbacks' on_fit_end.
    class RestoresBest(UserClassifier):
        def on_fit_end(self) -> None:
            with torch.no_grad():
                self.model.classifier.weight.mul_(-3.0)  # stands in for loading other (best) weights

    said = []
    monkeypatch.setattr(quantization_callback, "rank_zero_info", said.append)
    model = RestoresBest()
    hf_model = model.model
    t = trainer(tmp_path, [Int8Quantization(apply_on="fit_end", report=False)], max_steps=2)
    t.fit(model, loader())
    # the switch to int8 found the artifact made from the final weights (a stale one would be re-quantized)
    assert any(f"the artifact in {tmp_path / 'export-int8'}" in line for line in said)
    assert isinstance(model.model, OnnxRuntimeModel)
    ids = loader().dataset.ids[:8]
    served = load_int8_onnx(tmp_path / "export-int8")(input_ids=ids).logits
    with torch.no_grad():
        torch.testing.assert_close(served, hf_model(input_ids=ids).logits, atol=0.05, rtol=0.05)


def test_quantize_after_fit_without_artifact(tmp_path):
    model = UserClassifier()
    t = trainer(tmp_path, [Int8Quantization(apply_on="fit_end", report=False, export_artifact=False)], max_steps=2)
    t.fit(model, loader())
    assert isinstance(model.model, OnnxRuntimeModel) and model.model.int8_layers == 2 * 6
    assert not (tmp_path / "export-int8").exists()


def test_qat_fake_quant_in_the_last_part_of_training_only(tmp_path):
    seen = []

    class Spy(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            seen.append(any(isinstance(m, FakeQuantLinear) for m in pl_module.modules()))

    model = UserClassifier()
    callback = Int8Quantization(qat_start=0.5, report=False, export_artifact=False)
    t = trainer(tmp_path, [callback, Spy()], max_steps=4)
    t.fit(model, loader())
    assert seen == [False, False, True, True]  # steps 0, 1 float; from step 2 = 0.5 * 4 fake-quant
    assert not any(isinstance(m, FakeQuantLinear) for m in model.modules())  # removed at fit end


def test_non_empty_artifact_dir_fails_before_training_and_is_left_alone(tmp_path):
    taken = tmp_path / "served"
    taken.mkdir()
    (taken / "model.int8.onnx").write_text("yesterday's model")
    t = trainer(tmp_path, [Int8Quantization(artifact_dir=str(taken))])
    with pytest.raises(FileExistsError, match=r"'.*served' already holds files; choose another export_dir"):
        t.fit(UserClassifier(), loader())
    assert t.global_step == 0
    assert (taken / "model.int8.onnx").read_text() == "yesterday's model"


def test_nothing_to_quantize_fails_at_fit_start(tmp_path):
    t = trainer(tmp_path, [Int8Quantization(skip=[".*"])])
    with pytest.raises(ValueError, match=r"cannot quantize BertForSequenceClassification to int8: all 14 of its"):
        t.fit(UserClassifier(), loader())
    assert t.global_step == 0


def test_module_without_hf_model_attribute_fails_at_fit_start(tmp_path):
    class Bare(UserClassifier):
        def __init__(self) -> None:
            super().__init__()
            self.net = self.model
            del self.model

        def training_step(self, batch, batch_idx):
            return self.net(**batch).loss

    t = trainer(tmp_path, [Int8Quantization()])
    with pytest.raises(ValueError, match=r"needs the HF model in `Bare.model` \(got NoneType\)"):
        t.fit(Bare(), loader())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"backend": "int4"}, r"backend='int4'\): choose 'onnxruntime' or 'bitsandbytes'"),
        ({"backend": "torch"}, r"backend='torch'\) was removed .* use backend='onnxruntime'"),
        ({"apply_on": "never"}, r"apply_on='never'"),
        ({"qat_start": 1.5}, r"qat_start=1.5"),
        ({"qat_start": -1}, r"qat_start=-1"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Int8Quantization(**kwargs)


@pytest.mark.parametrize(
    ("backend", "module", "hint"),
    [("onnxruntime", "onnxruntime", r"pip install 'lit-llm\[onnx\]'"),
     ("bitsandbytes", "bitsandbytes", r"pip install 'bitsandbytes>=0.45'")],
)
def test_missing_backend_library_fails_at_setup_with_install_hint(tmp_path, monkeypatch, backend, module, hint):
    monkeypatch.setitem(sys.modules, module, None)  # a None entry makes `import` raise ImportError
    t = trainer(tmp_path, [Int8Quantization(backend=backend)])
    with pytest.raises(ImportError, match=hint):
        t.fit(UserClassifier(), loader())
