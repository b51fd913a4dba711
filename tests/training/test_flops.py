"""Analytic transformer FLOPs against torch's own FlopCounterMode (forward + backward, forward only)."""

from __future__ import annotations

import doctest

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
)

from lit_llm.training import flops
from lit_llm.training.flops import (
    TransformerShape,
    flops_per_batch,
    matmul_params,
    transformer_flops,
    transformer_shape,
)

B, T, VOCAB = 4, 64, 200


def bert_mlm():
    return BertForMaskedLM(BertConfig(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=512, max_position_embeddings=T))


def bert_cls():
    return BertForSequenceClassification(BertConfig(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=2,
                                                    num_attention_heads=4, intermediate_size=512,
                                                    max_position_embeddings=T, num_labels=3))


def gpt2():
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=128, n_layer=2, n_head=4, n_positions=T,
                                      bos_token_id=0, eos_token_id=0))


def counted(model: nn.Module, training: bool) -> int:
    torch.manual_seed(0)
    ids = torch.randint(0, VOCAB, (B, T))
    labels = torch.zeros(B, dtype=torch.long) if isinstance(model, BertForSequenceClassification) else ids
    with FlopCounterMode(display=False) as counter:
        if training:
            model(input_ids=ids, labels=labels).loss.backward()
        else:
            with torch.no_grad():
                model(input_ids=ids)
    return counter.get_total_flops()


@pytest.mark.parametrize("build", [bert_mlm, bert_cls, gpt2], ids=["bert-mlm", "bert-cls", "gpt2"])
@pytest.mark.parametrize("training", [True, False], ids=["fwd+bwd", "fwd"])
def test_within_10_percent_of_flop_counter(build, training):
    model = build()
    ours = flops_per_batch(model, B, T, training=training)
    reference = counted(model, training)
    assert reference > 1e8  # big enough for the count to mean something
    assert abs(ours - reference) / reference < 0.10, (ours, reference)
    if build is not bert_cls:
        # with an LM head every matmul runs on every token, so the formula is exact, not just close;
        # the classifier's pooler and head run on one token per sequence and are overcounted
        assert ours == reference


def test_formula_terms():
    shape = TransformerShape(matmul_params=1000, n_layers=2, attention_dim=8)
    weights = 2 * 1000 * (2 * 4)
    attention = 4 * 2 * 2 * 4**2 * 8
    assert transformer_flops(shape, 2, 4, training=False) == weights + attention
    assert transformer_flops(shape, 2, 4) == 3 * (weights + attention)


def test_matmul_params_counts_linears_and_conv1d_and_the_tied_head():
    model = gpt2()
    d, vocab, layers = 128, VOCAB, 2
    per_layer = 3 * d * d + d * d + 4 * d * d + 4 * d * d  # c_attn, c_proj, c_fc, mlp c_proj
    assert matmul_params(model) == layers * per_layer + d * vocab  # + tied LM head
    shape = transformer_shape(model)
    assert (shape.n_layers, shape.attention_dim) == (2, 128)


def test_explicit_head_dim_sets_the_attention_width():
    model = nn.Linear(2, 2)
    model.config = type("Config", (), {"num_hidden_layers": 3, "hidden_size": 64, "num_attention_heads": 4,
                                       "head_dim": 32})()
    assert transformer_shape(model) == TransformerShape(matmul_params=4, n_layers=3, attention_dim=128)


def test_model_without_hf_config_raises_with_the_fix():
    with pytest.raises(ValueError, match="Sequential has no HF config.*measure_flops"):
        transformer_shape(nn.Sequential(nn.Linear(2, 2)))


def test_doctests():
    assert doctest.testmod(flops).failed == 0
