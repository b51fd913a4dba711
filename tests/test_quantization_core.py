"""The quantization core: both int8 backends, the head skipped, fake-quant QAT layers, backend errors."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from lit_llm.compression_report import count_parameters, serialized_size_bytes
from lit_llm.quantization import (
    FakeQuantLinear,
    _fake_quant_int8,
    add_fake_quant,
    check_backend,
    quantize_int8,
    remove_fake_quant,
)


def _bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
                     max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg).eval()


@pytest.mark.parametrize("backend", ["torch", "bitsandbytes"])
def test_int8_backends_quantize_all_but_the_head(backend):
    model = _bert()
    ids = torch.randint(0, 50, (2, 8))
    ref = model(input_ids=ids).logits
    size_before = serialized_size_bytes(model)
    n = quantize_int8(model, backend)
    assert n == 2 * 6 + 1  # block Linears and the pooler; the classifier stays float
    assert type(model.classifier) is nn.Linear
    assert type(model.bert.encoder.layer[0].attention.self.query) is not nn.Linear
    out = model(input_ids=ids).logits
    torch.testing.assert_close(out, ref, atol=0.05, rtol=0.05)  # int8 error is small on this scale
    assert serialized_size_bytes(model) < size_before
    total, _ = count_parameters(model)
    assert total == sum(p.numel() for p in _bert().parameters())  # packed int8 weights are still counted


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


def test_torch_backend_unavailable_on_cuda():
    with pytest.raises(ValueError, match=r"backend='torch'\) runs on CPU only.*use backend='bitsandbytes'"):
        check_backend("torch", "cuda")


def test_bitsandbytes_unavailable_on_mps():
    with pytest.raises(ValueError, match=r"no kernels for device 'mps'"):
        check_backend("bitsandbytes", "mps")


def test_unknown_backend():
    with pytest.raises(ValueError, match=r"backend='int4'"):
        check_backend("int4", "cpu")
