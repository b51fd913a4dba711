"""ONNX export takes every text input the model's forward uses: token_type_ids for BERT (text pairs), not for GPT-2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_llm.commands.export import export_onnx, onnx_input_names

onnxruntime = pytest.importorskip("onnxruntime")


def test_bert_text_pairs_match_pytorch_and_token_types_matter(tmp_path, tiny_bert_dir, tiny_tokenizer):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=3).eval()
    with torch.no_grad():  # a fresh head gives logits near 0.01; these make them O(1), so 1e-4 is a real tolerance
        model.classifier.weight.normal_(0.0, 1.0)
        model.bert.embeddings.token_type_embeddings.weight.normal_(0.0, 0.5)
    path = export_onnx(model, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(path))
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]

    # Text pairs of another batch size and length than the export's dummy inputs (dynamic axes).
    enc = tiny_tokenizer(
        ["good movie", "the film was really bad", "dull"],
        ["the story", "awful acting and a boring script", "i loved the music"],
        padding=True,
        return_tensors="pt",
    )
    assert enc["token_type_ids"].any(), "the second texts of the pairs have token type 1"

    def onnx_logits(inputs):
        return session.run(None, {i.name: inputs[i.name].numpy() for i in session.get_inputs()})[0]

    with torch.no_grad():
        reference = model(**enc).logits.numpy()
    np.testing.assert_allclose(onnx_logits(enc), reference, atol=1e-4)

    # Dropping the segments changes the ONNX output, as it changes PyTorch's: token_type_ids is a live input.
    single = dict(enc, token_type_ids=torch.zeros_like(enc["token_type_ids"]))
    with torch.no_grad():
        reference_single = model(**single).logits.numpy()
    assert np.abs(onnx_logits(single) - onnx_logits(enc)).max() > 1e-2
    np.testing.assert_allclose(onnx_logits(single), reference_single, atol=1e-4)


def test_gpt2_takes_no_token_types(tiny_gpt2_dir, tiny_bert_dir):
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    # GPT-2's forward accepts token_type_ids but has no segment embedding of its own (no type_vocab_size).
    assert onnx_input_names(AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)) == ["input_ids", "attention_mask"]
    assert onnx_input_names(AutoModelForTokenClassification.from_pretrained(tiny_bert_dir, num_labels=2)) == [
        "input_ids",
        "attention_mask",
        "token_type_ids",
    ]


def test_export_onnx_gives_the_model_back_in_its_own_mode(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    from lit_llm.commands.export import export_onnx

    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=20))
    model.eval()
    export_onnx(model, tmp_path / "eval.onnx")
    assert not any(m.training for m in model.modules())  # dropout stays off for the caller
    model.train()
    export_onnx(model, tmp_path / "train.onnx")
    assert all(m.training for m in model.modules())
