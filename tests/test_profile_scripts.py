"""scripts/profile_step.py and scripts/bench_ema_update.py run end to end (on a tiny BERT instead of MiniLM) and
write what their benchmark pages show."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_gpu_check import _load


@pytest.fixture()
def tiny_classifier_dir(tmp_path, tiny_bert_dir) -> Path:
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "classifier"
    AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2).save_pretrained(out)
    return out


def test_profile_step_sums_every_operator_into_a_kind(tmp_path, tiny_classifier_dir, monkeypatch):
    script = _load("profile_step")
    monkeypatch.setattr(script, "MODEL", tiny_classifier_dir)
    assert script.main(["--steps", "2", "--threads", "1", "--batch", "4", "--seq", "8", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "step_profile.json").read_text())
    for precision in ("fp32", "bf16"):
        run = result["precisions"][precision]
        kinds = run["by_kind_ms"]
        assert kinds["matmul"] > 0 and kinds["optimizer (fused AdamW)"] > 0 and kinds["dropout"] > 0
        assert sum(kinds.values()) == pytest.approx(run["profiled_ms"])
        assert run["step_ms_min"] <= run["step_ms"] <= run["step_ms_max"]
    assert result["precisions"]["bf16"]["by_kind_ms"]["casts (autocast / dtype copies)"] > 0
    page = (tmp_path / "step_profile.md").read_text()
    assert "| matmul |" in page and "| **all, profiled** |" in page


def test_the_kinds_of_operators():
    script = _load("profile_step")
    assert script.kind_of("aten::_fused_adamw_") == "optimizer (fused AdamW)"
    assert script.kind_of("aten::addmm") == "matmul"
    assert script.kind_of("aten::bernoulli_") == "dropout"
    assert script.kind_of("aten::native_layer_norm_backward") == "layer norm"
    assert script.kind_of("aten::_to_copy") == "casts (autocast / dtype copies)"
    assert script.kind_of("aten::something_new") == "other"


def test_bench_ema_update_times_both_updates(tmp_path, tiny_classifier_dir, monkeypatch):
    script = _load("bench_ema_update")
    monkeypatch.setattr(script, "MODEL", tiny_classifier_dir)
    assert script.main(["--rounds", "2", "--updates", "2", "--threads", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "ema_update.json").read_text())
    assert set(result["ms_per_update"]) == {"Lightning EMAWeightAveraging (avg_fn)", "lit-llm EMA (multi_avg_fn)"}
    assert all(len(times) == 2 and min(times) > 0 for times in result["ms_per_update"].values())
    assert len(result["ratio_per_round"]) == 2


def test_the_two_ema_updates_compute_the_same_average(tiny_classifier_dir):
    """What the benchmark compares is the same arithmetic, so its ratio is a speed-up and nothing else."""
    import torch
    from transformers import AutoModelForSequenceClassification

    script = _load("bench_ema_update")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier_dir)
    runs = script.averages(model)
    for step in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * (step + 1))
        for average in runs.values():
            average.update_parameters(model)
    a, b = (dict(average.module.named_parameters()) for average in runs.values())
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=name)
