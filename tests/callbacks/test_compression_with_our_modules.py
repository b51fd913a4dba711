"""The compression callbacks on our own SequenceClassifier + TextClassificationDataModule (built in setup)."""

from __future__ import annotations

import json

import torch

from compression_helpers import trainer
from transformers import AutoModelForSequenceClassification

from lit_llm.callbacks import Int8Quantization, Pruning
from lit_llm.datamodules import TextClassificationDataModule
from lit_llm.modules import SequenceClassifier
from lit_llm.compression.quantized_artifacts import OnnxRuntimeModel


def test_pruning_then_int8_on_sequence_classifier(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, sentiment_csvs):
    config = dict(model_type="bert", vocab_size=len(tiny_tokenizer), hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=4, intermediate_size=40, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)  # the init decides which heads go; global ranking could empty a block (one head is kept)
    model = SequenceClassifier(config, tokenizer=str(tiny_tokenizer_dir))
    data = TextClassificationDataModule(str(tiny_tokenizer_dir), train_file=str(sentiment_csvs["train"]),
                                        test_file=str(sentiment_csvs["test"]), batch_size=16)
    pruning = Pruning(amount=0.5, mode="heads", start_step=0, end_step=2, frequency=1)
    t = trainer(tmp_path, [pruning, Int8Quantization()], max_steps=3)
    t.fit(model, datamodule=data)
    # the export is a plain HF model (zeroed heads, full size) that from_pretrained loads
    exported = AutoModelForSequenceClassification.from_pretrained(model.export_path)
    out = exported.bert.encoder.layer[0].attention.output.dense.weight
    assert int((out.view(32, 4, 8).abs().sum(dim=(0, 2)) == 0).sum()) >= 1  # at least one head zeroed
    hf_model = model.model
    t.test(model, datamodule=data)
    assert isinstance(model.model, OnnxRuntimeModel)  # int8 at test, quantized after the heads were shrunk
    assert sum(layer.attention.self.num_attention_heads for layer in hf_model.bert.encoder.layer) == 4  # 8 - 50%
    sections = json.loads((tmp_path / "compression_report.json").read_text())["sections"]
    assert {"pruning", "pruning_shrunk", "int8_float", "int8_quantized"} <= set(sections)
    assert "test/accuracy" in sections["int8_quantized"]
