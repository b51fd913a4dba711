"""Quantized artifacts: the int8 ONNX directory, the ONNX Runtime model's HF-like forward, bf16 and bitsandbytes."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

from lit_llm.commands.export import export_onnx
from lit_llm.compression.quantized_artifacts import (
    INT8_ONNX_FILE,
    MANIFEST_FILE,
    OnnxRuntimeModel,
    export_bf16,
    export_bitsandbytes,
    export_int8_onnx,
    load_int8_onnx,
)
from conftest import tiny_bert_config


def _classifier(tokenizer, **overrides) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = tiny_bert_config(len(tokenizer), num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"},
                              label2id={"neg": 0, "neu": 1, "pos": 2}, **overrides)
    return BertForSequenceClassification(config).eval()


def _batch(tokenizer):
    return tokenizer(["a good movie", "the worst film and a boring plot", "fun"], padding=True, return_tensors="pt")


def test_int8_onnx_artifact_holds_int8_weights_config_tokenizer_and_manifest(tmp_path, tiny_tokenizer):
    model = _classifier(tiny_tokenizer)
    out = export_int8_onnx(model, tmp_path / "int8", tiny_tokenizer)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["file"] == INT8_ONNX_FILE and manifest["int8_matmuls"] == 2 * 6
    assert manifest["inputs"][:2] == ["input_ids", "attention_mask"] and manifest["outputs"] == ["logits"]
    assert manifest["float_linear_layers"] == ["bert.pooler.dense", "classifier"]
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "neg", "1": "neu", "2": "pos"}
    assert (out / "tokenizer_config.json").is_file()

    import onnx
    from onnx import TensorProto, numpy_helper

    graph = onnx.load(str(out / INT8_ONNX_FILE)).graph
    int8_weights = sum(  # the quantized weight matrices, not their per-row int8 zero points
        numpy_helper.to_array(t).size
        for t in graph.initializer
        if t.data_type == TensorProto.INT8 and t.name.endswith("_quantized")
    )
    block_linears = [m for n, m in model.named_modules() if type(m) is nn.Linear and ".layer." in n]
    assert int8_weights == sum(m.weight.numel() for m in block_linears)  # exactly the block Linear weights

    loaded = load_int8_onnx(out)
    enc = _batch(tiny_tokenizer)
    with torch.no_grad():
        ref = model(**enc).logits
    torch.testing.assert_close(loaded(**enc).logits, ref, atol=0.05, rtol=0.05)
    assert loaded.config.id2label[2] == "pos"


def test_onnx_runtime_model_forward_and_loss_match_the_hf_model(tmp_path, tiny_tokenizer):
    # fp32 ONNX: any difference is the wrapper's (inputs, defaults, loss), not quantization
    model = _classifier(tiny_tokenizer)
    export_onnx(model, tmp_path / "model.onnx")
    ort_model = OnnxRuntimeModel(tmp_path / "model.onnx", model.config)
    enc = _batch(tiny_tokenizer)
    labels = torch.tensor([2, 0, 1])
    with torch.no_grad():
        ref = model(**enc, labels=labels)
    got = ort_model(**enc, labels=labels)
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.loss, ref.loss, atol=1e-5, rtol=1e-4)
    # omitted attention_mask / token_type_ids get HF's defaults (all ones / zeros)
    with torch.no_grad():
        bare = model(input_ids=enc["input_ids"]).logits
    torch.testing.assert_close(ort_model(input_ids=enc["input_ids"]).logits, bare, atol=1e-5, rtol=1e-4)


def test_exports_refuse_a_non_empty_directory_and_need_linear_layers(tmp_path, tiny_tokenizer):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("earlier export")
    model = _classifier(tiny_tokenizer)
    for export in (export_int8_onnx, export_bf16, export_bitsandbytes):
        with pytest.raises(FileExistsError, match=r"already holds files; choose another export_dir"):
            export(model, tmp_path / "taken")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "earlier export"
    with pytest.raises(ValueError, match=r"cannot quantize Sequential to int8: it has no nn.Linear layer"):
        export_int8_onnx(nn.Sequential(nn.Embedding(8, 4)), tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_bad_export_arguments(tmp_path, tiny_tokenizer, monkeypatch):
    model = _classifier(tiny_tokenizer)
    with pytest.raises(ValueError, match=r"export_bitsandbytes\(bits=3\): choose 8 \(LLM.int8\) or 4 \(NF4\)"):
        export_bitsandbytes(model, tmp_path / "x", bits=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"weight_type='int4'\): choose 'qint8' or 'quint8'"):
        export_int8_onnx(model, tmp_path / "x", weight_type="int4")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"bf16 export needs a transformers PreTrainedModel .* got Sequential"):
        export_bf16(nn.Sequential(nn.Linear(2, 2)), tmp_path / "x")
    with pytest.raises(FileNotFoundError, match=r"holds no model.int8.onnx"):
        load_int8_onnx(tmp_path)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'lit-llm\[onnx\]'"):
        export_int8_onnx(model, tmp_path / "x")
    monkeypatch.setitem(sys.modules, "accelerate", None)
    with pytest.raises(ImportError, match=r"pip install 'bitsandbytes>=0.45' 'accelerate>=1.1'"):
        export_bitsandbytes(model, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_bf16_artifact_loads_in_bfloat16_and_matches_the_in_memory_bf16_model(tmp_path, tiny_tokenizer):
    model = _classifier(tiny_tokenizer)
    out = export_bf16(model, tmp_path / "bf16", tiny_tokenizer)
    assert next(model.parameters()).dtype == torch.float32  # the run's model is not converted
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    loaded = AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.bfloat16).eval()
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    enc = _batch(tiny_tokenizer)
    with torch.no_grad():
        expected = model.to(torch.bfloat16)(**enc).logits
        torch.testing.assert_close(loaded(**enc).logits, expected, atol=0.0, rtol=0.0)  # the same bf16 weights


@pytest.mark.parametrize("bits", [8, 4])
def test_bitsandbytes_artifact_carries_its_quantization_config_and_reloads_on_cpu(tmp_path, tiny_tokenizer, bits):
    pytest.importorskip("accelerate")
    # Sizes of a real model's layers: on AVX512-BF16 CPUs bitsandbytes repacks 4-bit weights for its CPU kernel
    # and asserts on layers narrower than its block (64) or with out features not a multiple of 32.
    model = _classifier(tiny_tokenizer, hidden_size=64, intermediate_size=128)
    out = export_bitsandbytes(model, tmp_path / f"bnb{bits}", tiny_tokenizer, bits=bits, device="cpu")
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "bitsandbytes"
    assert config[f"load_in_{bits}bit"] is True and config["llm_int8_skip_modules"] == ["classifier"]
    if bits == 4:
        assert config["bnb_4bit_quant_type"] == "nf4"
    # bitsandbytes >= 0.45 has CPU kernels, so the reload path is checked here too; CUDA is the serving target
    reloaded = AutoModelForSequenceClassification.from_pretrained(out).eval()
    layer = reloaded.bert.encoder.layer[0].output.dense
    assert type(layer).__name__ == ("Linear8bitLt" if bits == 8 else "Linear4bit")
    assert type(reloaded.classifier) is nn.Linear
    enc = _batch(tiny_tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**enc).logits, model(**enc).logits, atol=0.05, rtol=0.05)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bitsandbytes serving target: needs a CUDA GPU")
@pytest.mark.parametrize("bits", [8, 4])
def test_bitsandbytes_artifact_serves_on_cuda(tmp_path, tiny_tokenizer, bits):
    model = _classifier(tiny_tokenizer)
    out = export_bitsandbytes(model, tmp_path / f"bnb{bits}", tiny_tokenizer, bits=bits)
    reloaded = AutoModelForSequenceClassification.from_pretrained(out, device_map="cuda").eval()
    enc = {k: v.cuda() for k, v in _batch(tiny_tokenizer).items()}
    with torch.no_grad():
        got = reloaded(**enc).logits.float().cpu()
        ref = model(**{k: v.cpu() for k, v in enc.items()}).logits
    torch.testing.assert_close(got, ref, atol=0.05, rtol=0.05)
