"""The compression report: exact parameter counts, size on disk, latency inputs, JSON + markdown sections."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lit_llm.compression.report import count_parameters, example_inputs, measure, update_report


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, input_ids, attention_mask=None):
        return self.out(self.emb(input_ids).mean(1))


def test_count_parameters_counts_exact_zeros():
    model = _Tiny()
    with torch.no_grad():
        model.out.weight[0].zero_()
    assert count_parameters(model) == (40 + 8 + 2, 40 + 4 + 2)


def test_example_inputs_repeat_rows_and_drop_labels():
    batch = {"input_ids": torch.arange(6).view(2, 3), "labels": torch.tensor([0, 1]), "text": ["a", "b"]}
    inputs = example_inputs(batch, 5)
    assert set(inputs) == {"input_ids"}
    assert inputs["input_ids"][:, 0].tolist() == [0, 3, 0, 3, 0]
    with pytest.raises(ValueError, match=r"no 'input_ids' tensor \(keys: \['x'\]\)"):
        example_inputs({"x": torch.zeros(1)}, 2)


def test_measure_and_report_sections(tmp_path):
    model = _Tiny()
    stats = measure(model, {"input_ids": torch.zeros(2, 3, dtype=torch.long)}, batch_sizes=(1, 4), repeats=1,
                    metrics={"test/accuracy": 0.5})
    assert stats["parameters"] == 50 and stats["test/accuracy"] == 0.5
    assert stats["latency_ms_bs1"] > 0 and stats["latency_ms_bs4"] > 0 and stats["size_mb"] > 0
    update_report(tmp_path, "baseline", stats)
    update_report(tmp_path, "int8", {"parameters": 50, "backend": "torch"})
    report = json.loads((tmp_path / "compression_report.json").read_text())
    assert list(report["sections"]) == ["baseline", "int8"]
    md = (tmp_path / "compression_report.md").read_text()
    assert "| baseline | 50 |" in md and "| int8 | 50 |" in md


def test_measurement_batches_are_spread_over_the_loader_not_its_shortest_first_batches():
    from torch.utils.data import DataLoader

    from lit_llm.compression.report import first_batch, spread_batches

    loader = DataLoader(list(range(100)), batch_size=10)  # batch i holds i*10 .. i*10+9
    firsts = lambda batches: [int(b[0]) for b in batches]  # noqa: E731
    assert firsts(spread_batches(loader, 4)) == [0, 30, 60, 90]  # first, last and evenly between
    assert firsts(spread_batches(loader, 1)) == [40]  # one batch: the middle one
    assert firsts(spread_batches(loader, 0)) == []  # none asked, none read
    assert firsts(spread_batches(loader, 20)) == list(range(0, 100, 10))  # more than there are: each once
    assert firsts(spread_batches((b for b in loader), 2)) == [0, 10]  # no length: the first ones
    # with evaluation sorted by length (shortest first) the latency batch is a middle one
    trainer = type("T", (), {"test_dataloaders": DataLoader([{"input_ids": [i]} for i in range(5)], batch_size=1),
                             "val_dataloaders": None, "train_dataloader": None})()
    assert int(first_batch(trainer)["input_ids"][0][0]) == 2
