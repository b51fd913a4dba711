"""The quantization core: both int8 backends, the head skipped, fake-quant QAT layers, backend errors."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from lit_llm.compression.report import count_parameters, serialized_size_bytes
from lit_llm.compression.quantization import (
    FakeQuantLinear,
    _fake_quant_int8,
    add_fake_quant,
    check_backend,
    quantizable_linear_names,
    quantize_int8,
    remove_fake_quant,
)
from lit_llm.compression.quantized_artifacts import OnnxRuntimeModel


def _bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
                     max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg).eval()


def test_onnxruntime_int8_quantizes_the_block_linears_and_leaves_the_model_float():
    model = _bert()
    ids = torch.randint(0, 50, (2, 8))
    ref = model(input_ids=ids).logits
    int8 = quantize_int8(model, "onnxruntime")
    assert isinstance(int8, OnnxRuntimeModel)
    # the 12 block Linears run as int8 MatMuls; the pooler (a Gemm in ONNX, which ORT's dynamic int8 skips) and
    # the classifier (skipped by default) stay float
    assert int8.int8_layers == 2 * 6
    assert type(model.bert.encoder.layer[0].attention.self.query) is nn.Linear  # the float model is untouched
    out = int8(input_ids=ids).logits
    torch.testing.assert_close(out, ref.detach(), atol=0.05, rtol=0.05)  # int8 error is small on this scale


def test_bitsandbytes_int8_swaps_all_but_the_head_in_place():
    model = _bert()
    ids = torch.randint(0, 50, (2, 8))
    ref = model(input_ids=ids).logits
    size_before = serialized_size_bytes(model)
    assert quantize_int8(model, "bitsandbytes") is model
    assert type(model.classifier) is nn.Linear
    assert type(model.bert.encoder.layer[0].attention.self.query).__name__ == "Linear8bitLt"
    assert type(model.bert.pooler.dense).__name__ == "Linear8bitLt"
    torch.testing.assert_close(model(input_ids=ids).logits, ref, atol=0.05, rtol=0.05)
    assert serialized_size_bytes(model) < size_before
    total, _ = count_parameters(model)
    assert total == sum(p.numel() for p in _bert().parameters())  # int8 weights are still counted


def test_no_linear_layer_to_quantize_is_a_clear_error():
    with pytest.raises(ValueError, match=r"cannot quantize Sequential to int8: it has no nn.Linear layer"):
        quantizable_linear_names(nn.Sequential(nn.Embedding(4, 4), nn.LayerNorm(4)))
    with pytest.raises(ValueError, match=r"all 14 of its Linear layers match skip=\['.\*'\]; narrow skip"):
        quantize_int8(_bert(), "onnxruntime", skip=[".*"])
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=16, n_embd=8, n_layer=1, n_head=2, n_positions=8))
    with pytest.raises(ValueError, match=r"lm_head.*its transformers Conv1D layers \(GPT-2 style\) are not quantized"):
        quantizable_linear_names(gpt2)


def test_onnxruntime_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"needs onnxruntime and onnx: pip install 'lit-llm\[onnx\]'"):
        check_backend("onnxruntime", "cpu")


def test_torch_backend_was_removed_and_names_its_replacement():
    with pytest.raises(ValueError, match=r"backend='torch'\) was removed.*use backend='onnxruntime'"):
        check_backend("torch", "cpu")


def test_fake_quant_rounds_to_the_int8_grid_with_identity_gradient():
    x = torch.tensor([[1.0, -0.5, 0.004], [2.0, 0.0, -2.0]], requires_grad=True)
    q = _fake_quant_int8(x, dim=1)
    scale = torch.tensor([[1.0 / 127], [2.0 / 127]])
    torch.testing.assert_close(q, torch.round(x.detach() / scale) * scale)
    q.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))


def test_fake_quant_layers_share_parameters_and_round_trip():
    model = _bert()
    keys = list(model.state_dict())
    weight = model.bert.encoder.layer[0].output.dense.weight
    assert add_fake_quant(model) == 13
    layer = model.bert.encoder.layer[0].output.dense
    assert isinstance(layer, FakeQuantLinear) and layer.weight is weight
    assert list(model.state_dict()) == keys  # checkpoints unchanged
    assert remove_fake_quant(model) == 13
    assert type(model.bert.encoder.layer[0].output.dense) is nn.Linear
    assert model.bert.encoder.layer[0].output.dense.weight is weight


def test_bitsandbytes_missing_gives_install_hint(monkeypatch):
    # A None entry in sys.modules makes `import bitsandbytes` raise ImportError, as if it were not installed.
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(ImportError, match=r"pip install 'bitsandbytes>=0.45'"):
        check_backend("bitsandbytes", "cpu")


def test_bitsandbytes_unavailable_on_mps():
    with pytest.raises(ValueError, match=r"no kernels for device 'mps'"):
        check_backend("bitsandbytes", "mps")


def test_unknown_backend():
    with pytest.raises(ValueError, match=r"backend='int4'\): choose 'onnxruntime' or 'bitsandbytes'"):
        check_backend("int4", "cpu")
