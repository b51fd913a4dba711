"""LoRA / QLoRA in the planner: trainable parameters as peft counts them, their memory, and the plan's candidates."""

from __future__ import annotations

import json

import pytest

from lit_llm.planning import (
    MODEL_PRESETS,
    ModelDims,
    NothingFitsError,
    PlanChoice,
    PlanRequest,
    estimate_memory,
    estimate_step_time,
    lora_parameters,
    make_plan,
    parameter_tensors,
    resolve_hardware,
)
from lit_llm.planning.cli import main
from lit_llm.planning.params import lora_targets

TINY_BERT = ModelDims("tiny-bert", "bert", 2, 32, 2, 37, 211, max_positions=128)
TINY_GPT2 = ModelDims("tiny-gpt2", "gpt2", 3, 48, 4, 192, 300, max_positions=64, activation="gelu_new")
A100 = resolve_hardware("A100-80GB")


def _peft_trainable(model, target_modules: str, modules_to_save: list[str] | None = None) -> int:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules=target_modules, modules_to_save=modules_to_save,
                        fan_in_fan_out=type(model).__name__.startswith("GPT2"))
    peft_model = get_peft_model(model, config)
    return sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


# peft 0.21 calls transformers' deprecated is_gradient_checkpointing (theirs to fix, not ours)
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_trainable_parameters_match_peft():
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from lit_llm.hf import build_config

    with torch.device("meta"):
        bert = AutoModelForSequenceClassification.from_config(build_config(TINY_BERT.hf_config_dict(), num_labels=3))
        gpt2 = AutoModelForCausalLM.from_config(build_config(TINY_GPT2.hf_config_dict()))
    # every Linear of the blocks, and the classifier trained in full
    bert_targets = r".*encoder\.layer\.\d+\..*(query|key|value|dense)"
    assert _peft_trainable(bert, bert_targets, ["classifier"]) == lora_parameters(TINY_BERT, "classification", 4, 3)
    assert _peft_trainable(gpt2, r".*h\.\d+\..*(c_attn|c_proj|c_fc)") == lora_parameters(TINY_GPT2, "clm", 4)


def test_lora_memory_holds_adapter_state_only():
    dims = MODEL_PRESETS["gpt2"]
    tensors = parameter_tensors(dims, "clm")
    n = sum(t.numel for t in tensors)
    targets = lora_targets(tensors)
    trainable = lora_parameters(dims, "clm", 8)
    assert trainable == sum(8 * (t.shape[0] + t.shape[1]) for t in targets)

    full = estimate_memory(dims, "clm", PlanChoice(precision="bf16-mixed", micro_batch=4), 1024, A100)
    lora = estimate_memory(dims, "clm", PlanChoice(precision="bf16-mixed", micro_batch=4, adapter="lora"), 1024, A100)
    assert (lora.gradients, lora.optimizer) == (4 * trainable, 8 * trainable)  # fp32 grads, AdamW: adapters only
    assert lora.weights == 2 * n + 4 * trainable  # frozen base in bf16, fp32 adapters
    assert lora.peak < full.peak

    qlora = estimate_memory(dims, "clm", PlanChoice(precision="bf16-mixed", micro_batch=4, adapter="qlora"), 1024, A100)
    quantized = sum(t.numel for t in targets)
    assert qlora.weights == pytest.approx(quantized * (0.5 + 4 / 64) + 2 * (n - quantized) + 4 * trainable)
    assert qlora.peak < lora.peak

    fp32 = estimate_memory(dims, "clm", PlanChoice(micro_batch=4, adapter="lora"), 1024, A100)
    assert fp32.weights == 4 * n + 4 * trainable  # 32-true keeps the frozen base in fp32


def test_frozen_weights_cost_four_flops_not_six():
    full = estimate_step_time(TINY_GPT2, "clm", PlanChoice(micro_batch=2), 32, A100)
    lora = estimate_step_time(TINY_GPT2, "clm", PlanChoice(micro_batch=2, adapter="lora"), 32, A100)
    assert lora.flops < full.flops


def test_full_training_recommended_with_lora_and_qlora_alongside():
    report = make_plan(PlanRequest(MODEL_PRESETS["gpt2"], "clm", 512, 16, A100))
    assert report.best.choice.adapter == "none"
    assert [c.choice.adapter for c in report.alternatives] == ["lora", "qlora"]
    assert report.alternatives[0].trainable == lora_parameters(MODEL_PRESETS["gpt2"], "clm", 8)
    assert all(c.choice.adapter == "none" for c in report.candidates)
    assert any("listed as alternatives, not chosen" in r for r in report.reasons)


def test_qlora_fits_where_full_training_does_not():
    a10 = resolve_hardware("A10")
    with pytest.raises(NothingFitsError, match=r"Q?LoRA fine-tuning \(--adapter q?lora\): .* trainable parameters"):
        make_plan(PlanRequest(MODEL_PRESETS["llama-7b"], "clm", 512, 8, a10, allow_offload=False))
    report = make_plan(PlanRequest(MODEL_PRESETS["llama-7b"], "clm", 512, 8, a10, adapter="qlora", lora_rank=16))
    best = report.best
    assert best.choice.adapter == "qlora" and best.choice.lora_rank == 16 and best.fits
    assert best.trainable == lora_parameters(MODEL_PRESETS["llama-7b"], "clm", 16)
    assert any(r.startswith("qlora r16: ") and "frozen base in 4-bit NF4" in r for r in report.reasons)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(adapter="lora", task="mlm"), r"adapter 'lora' with task 'mlm': LoRA fine-tunes a pre-trained model"),
        (dict(adapter="dora"), r"adapter 'dora': choose one of none, lora, qlora"),
        (dict(lora_rank=0), r"lora_rank=0 must be >= 1"),
    ],
)
def test_bad_adapter_requests(kwargs, match):
    task = kwargs.pop("task", "classification")
    with pytest.raises(ValueError, match=match):
        PlanRequest(MODEL_PRESETS["bert-base"], task, 128, 8, A100, **kwargs)
    with pytest.raises(ValueError, match=r"PlanChoice\(adapter='dora'\): choose one of none, lora, qlora"):
        PlanChoice(adapter="dora")  # type: ignore[arg-type]


def test_cli_adapter_plan_json_and_table(capsys):
    argv = ["--model", "gpt2", "--task", "clm", "--seq_len", "512", "--global_batch", "8", "--hardware", "T4"]
    assert main([*argv, "--adapter", "lora", "--lora_rank", "4", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    best = plan["recommendation"]
    assert best["adapter"] == "lora" and best["label"].startswith("ddp 16-mixed lora-r4")
    assert best["trainable_parameters"] == lora_parameters(MODEL_PRESETS["gpt2"], "clm", 4)
    assert main([*argv, "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "Parameter-efficient alternatives" in out and "qlora-r8" in out


def test_emitted_qlora_config_names_the_lora_callback(tmp_path):
    from lit_llm.planning import emit_config

    from tests.planning.test_plan_cli import _lightning_parser

    req = PlanRequest(MODEL_PRESETS["gpt2"], "clm", 256, 8, resolve_hardware("A10"), adapter="qlora", lora_rank=4,
                      steps=10)
    report = make_plan(req)
    cfg = _lightning_parser().parse_path(str(emit_config(req, report.best, tmp_path / "qlora.yaml")))
    lora = cfg.trainer.callbacks[-1]
    assert lora.class_path == "lit_llm.callbacks.LoRA"
    assert (lora.init_args.rank, lora.init_args.quantize_base) == (4, "nf4")
