"""Candidates, the recommendation and its reasons, presets, and every bad-input error of the planner API."""

from __future__ import annotations

import pytest

from lit_llm.planning import (
    HARDWARE_PRESETS,
    MODEL_PRESETS,
    HardwareSpec,
    NothingFitsError,
    PlanRequest,
    evaluate_candidates,
    make_plan,
    resolve_hardware,
    resolve_model,
)
from lit_llm.planning.presets import GIB


def _req(model="bert-base", task="mlm", seq=128, batch=32, hw: str | HardwareSpec = "A100-80GB", **kw) -> PlanRequest:
    hardware = resolve_hardware(hw) if isinstance(hw, str) else hw
    return PlanRequest(resolve_model(model), task, seq, batch, hardware, **kw)


def test_presets_cover_the_issue():
    assert {"bert-base", "bert-large", "roberta-large", "gpt2", "gpt2-xl", "llama-7b"} <= set(MODEL_PRESETS)
    assert {"cpu", "T4", "A10", "A100-40GB", "A100-80GB", "H100", "H200"} <= set(HARDWARE_PRESETS)
    assert resolve_hardware("a100-80gb").name == "A100-80GB"  # case-insensitive
    assert resolve_hardware("H100", memory_gib=40.0).memory_gib == 40.0


def test_hf_config_directory_is_read(tiny_bert_dir):
    dims = resolve_model(str(tiny_bert_dir))
    assert (dims.arch, dims.num_layers, dims.hidden, dims.heads, dims.ffn) == ("bert", 2, 32, 2, 37)


def test_small_model_on_a_big_gpu_gets_plain_ddp():
    report = make_plan(_req(devices=4, steps=1000))
    best = report.best.choice
    assert (best.strategy, best.checkpointing, best.optimizer_8bit, best.offload) == ("ddp", False, False, False)
    assert best.precision == "bf16-mixed"  # 16x the fp32 peak on an A100, no loss scaler
    assert best.micro_batch * best.accumulation * 4 == 32
    assert report.best.fits and report.best.total_s == pytest.approx(1000 * report.best.time.step_s)
    assert any(r.startswith("DDP: a full replica fits") for r in report.reasons)
    # fitting candidates come first, sorted so the recommendation leads
    assert report.candidates[0] is report.best
    fits = [c.fits for c in report.candidates]
    assert fits == sorted(fits, reverse=True)


def test_seven_billion_needs_sharding_on_80gb():
    report = make_plan(_req("llama-7b", "clm", 2048, 256, devices=8, tokens=10**9))
    assert report.best.choice.strategy.startswith("fsdp")
    assert any("no DDP plan fits" in r for r in report.reasons)
    assert report.best.memory.peak <= 79.1 * GIB
    assert report.request.total_steps == -(-10**9 // (256 * 2048))


def test_one_t4_for_gpt2_xl_needs_memory_savers():
    report = make_plan(_req("gpt2-xl", "clm", 1024, 8, "T4"))
    c = report.best.choice
    assert c.offload or c.optimizer_8bit or c.checkpointing
    assert c.precision == "16-mixed"  # the T4 has no bf16
    assert all(cand.choice.precision != "bf16-mixed" for cand in report.candidates)


def test_cpu_plans_use_ddp_only():
    cands = evaluate_candidates(_req("bert-base", seq=128, batch=8, hw="cpu", devices=2))
    assert {c.choice.strategy for c in cands} == {"ddp"}
    assert {c.choice.precision for c in cands} == {"32-true", "bf16-mixed"}


def test_nothing_fits_says_what_would():
    with pytest.raises(NothingFitsError, match=r"nothing fits: llama-7b .* What would fit: more devices: \d+ per node"):
        make_plan(_req("llama-7b", "clm", 4096, 8, "A10", allow_offload=False))
    with pytest.raises(NothingFitsError, match=r"a smaller micro-batch: 1 with accumulation"):
        make_plan(_req("bert-large", "mlm", 512, 256, "T4", micro_batch=256, strategy="ddp"))
    with pytest.raises(NothingFitsError, match=r"CPU offload \(drop --no_offload\)"):
        make_plan(_req("gpt2-xl", "clm", 128, 1, "T4", allow_offload=False))


def test_nothing_fits_suggests_a_shorter_sequence():
    # a CPU whose memory lies between the smallest plan at seq 512 and at seq 1024
    # (activations dominate with a fixed micro-batch of 16)
    small = min(c.memory.peak for c in evaluate_candidates(_req("gpt2", "clm", 512, 16, "cpu", micro_batch=16)))
    large = min(c.memory.peak for c in evaluate_candidates(_req("gpt2", "clm", 1024, 16, "cpu", micro_batch=16)))
    assert small < large
    cpu = resolve_hardware("cpu", memory_gib=(small + large) / 2 / GIB)
    with pytest.raises(NothingFitsError, match=r"a shorter sequence: --seq_len 512 .*more memory"):
        make_plan(_req("gpt2", "clm", 1024, 16, cpu, micro_batch=16))


def test_unknown_presets_list_the_presets():
    with pytest.raises(ValueError, match=r"unknown model preset 'bert-huge'; presets: bert-base, bert-large"):
        resolve_model("bert-huge")
    with pytest.raises(ValueError, match=r"unknown hardware preset 'V100'; presets: cpu, T4, A10, A100-40GB"):
        resolve_hardware("V100")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(tokens=10**6, steps=10), r"give tokens \(1000000\) or steps \(10\), not both"),
        (dict(batch=30, devices=4), r"global batch 30 does not divide over 4 devices .* e\.g\. 28 or 32"),
        (dict(batch=32, devices=2, micro_batch=5), r"micro batch 5 does not divide the per-device batch 16"),
        (dict(seq=1024), r"seq_len 1024 exceeds bert-base's 512 position embeddings"),
        (dict(model="gpt2", task="mlm"), r"task 'mlm' needs an encoder, but 'gpt2' is a gpt2 decoder"),
        (dict(hw="T4", precision="bf16-mixed"), r"precision 'bf16-mixed' is not supported on T4"),
        (dict(hw="cpu", strategy="fsdp-full"), r"Lightning's FSDPStrategy refuses CPU"),
        (dict(strategy="fsdp-hybrid"), r"'fsdp-hybrid' .* needs --nodes >= 2"),
        (dict(steps=0), r"steps=0 must be >= 1"),
    ],
)
def test_contradictory_requests(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _req(**kwargs)


def test_all_problems_in_one_message():
    with pytest.raises(ValueError, match=r"not both: .*; global batch 7 does not divide over 2 devices"):
        _req(batch=7, devices=2, tokens=10, steps=10)


# ------------------------------------------------------------------------------------- any architecture, meta device
_ANY_ARCH = [
    # (model_type, config, the activation model it follows)
    ("opt", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64, vocab_size=120,
                 max_position_embeddings=64, word_embed_proj_dim=32), "gpt2"),
    ("deberta-v2", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        vocab_size=120, max_position_embeddings=64), "bert"),
    ("qwen2", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=64, vocab_size=120), "llama"),
]


@pytest.mark.parametrize(("model_type", "spec", "arch"), _ANY_ARCH)
def test_any_architecture_is_counted_from_its_own_config(tmp_path, model_type, spec, arch):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from lit_llm.planning import count_parameters

    config = AutoConfig.for_model(model_type, **spec)
    config.save_pretrained(tmp_path)
    for given in (str(tmp_path), str(tmp_path / "config.json")):  # a model directory or its config.json
        dims = resolve_model(given)
        assert (dims.arch, dims.num_layers, dims.hidden) == (arch, 2, 32)
        with torch.device("meta"):
            cls_model = AutoModelForSequenceClassification.from_config(AutoConfig.for_model(model_type, **spec,
                                                                                            num_labels=3))
        assert count_parameters(dims, "classification", 3) == sum(p.numel() for p in cls_model.parameters())
    if arch != "bert":
        with torch.device("meta"):
            lm = AutoModelForCausalLM.from_config(config)
        assert count_parameters(dims, "clm") == sum(p.numel() for p in lm.parameters())
    report = make_plan(PlanRequest(dims, "classification", 32, 8, resolve_hardware("cpu")))
    assert report.best.fits


def test_bad_config_files_name_the_file(tmp_path):
    no_type = tmp_path / "config.json"
    no_type.write_text('{"hidden_size": 32}')
    with pytest.raises(ValueError, match=r"config.json' has no 'model_type' key: give the config.json that"):
        resolve_model(str(no_type))
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ValueError, match=r"broken.json' is not readable JSON"):
        resolve_model(str(broken))


def test_a_task_the_architecture_lacks_is_refused(tmp_path):
    from transformers import AutoConfig

    AutoConfig.for_model("deberta-v2", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, vocab_size=50).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model_type 'deberta-v2' has no AutoModelForCausalLM in transformers"):
        evaluate_candidates(_req(str(tmp_path), "clm", 32, 8, "cpu"))
