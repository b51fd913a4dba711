"""scripts/profile_step.py and scripts/bench_ema_update.py run end to end (on a tiny BERT instead of MiniLM) and
write what their benchmark pages show."""

from __future__ import annotations

import json
import sys
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


def test_bench_cpu_step_times_each_variant_and_pairs_the_ratios_by_round(tmp_path, tiny_bert_dir, monkeypatch):
    import torch
    from transformers import AutoModelForSequenceClassification

    script = _load("bench_cpu_step")
    # Dropout on, so that there are layers to swap (the session's tiny BERT has none).
    model_dir = tmp_path / "with_dropout"
    AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2, hidden_dropout_prob=0.1
                                                       ).save_pretrained(model_dir)
    # The variants without the allocator setting only: it is process-wide, and this is the test process; what
    # child() changes in the process (threads, sys.path, the profile script's model) is put back.
    threads = torch.get_num_threads()
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "profile_step", raising=False)
    try:
        runs = [script.child(variant, "bf16", 4, 8, 2, 1, model_dir) for variant in ("torch", "dropout")]
    finally:
        torch.set_num_threads(threads)
    assert [run["dropout_layers_swapped"] > 0 for run in runs] == [False, True]
    assert all(len(run["step_ms"]) == 2 and not run["allocator_applied"] for run in runs)
    fake = [{"variant": v, "step_ms": [ms, ms], "allocator_applied": v in ("allocator", "lit-llm")} for v, ms in
            [("torch", 300.0), ("dropout", 250.0), ("allocator", 200.0), ("lit-llm", 150.0),
             ("torch", 330.0), ("dropout", 300.0), ("allocator", 300.0), ("lit-llm", 300.0)]]
    page = script.render({"machine": "m", "threads": 1, "torch": "t", "precision": "bf16", "batch": 4, "seq": 8,
                          "steps": 2, "rounds": 2, "runs": fake}, "cmd")
    # lit-llm: 300/150 = 2.0 in round 0, 330/300 = 1.1 in round 1; median 1.55.
    assert "| `lit-llm` | both (`lit-llm fit` on CPU) | 225.0 (150.0 - 300.0) | 1.550 (1.100 - 2.000) |" in page
    assert "not applied" not in page
    fake[3]["allocator_applied"] = False
    assert "| `lit-llm` | both (`lit-llm fit` on CPU) (**the allocator setting was not applied**" in script.render(
        {"machine": "m", "threads": 1, "torch": "t", "precision": "bf16", "batch": 4, "seq": 8, "steps": 2,
         "rounds": 2, "runs": fake}, "cmd")


def test_bench_cpu_job_reads_the_run_summary_and_pairs_the_rounds():
    script = _load("bench_cpu_job")
    line = "time: start-up 9.1 s, training loop 38.0 s (120 batches, 3,840 samples, 100.9 samples/s), test 3.5 s"
    assert script.loop_figures(line) == {"loop_s": 38.0, "batches": 120, "samples": 3840, "samples_per_s": 100.9}
    with pytest.raises(ValueError, match="no 'training loop"):
        script.loop_figures("a run that crashed")
    runs = [{"round": r, "variant": v, "samples_per_s": s} for r, v, s in
            [(0, "lit-llm", 100.0), (0, "torch", 80.0), (1, "torch", 90.0), (1, "lit-llm", 99.0),
             (2, "lit-llm", 120.0), (2, "torch", 80.0)]]
    page = script.render({"machine": "m", "torch": "t", "steps": 120, "rounds": 3, "runs": runs}, "cmd")
    assert "| 1 | 99.0 | 90.0 | 1.100 |" in page
    assert "| **median** | | | **1.250** (1.100 - 1.500) |" in page
