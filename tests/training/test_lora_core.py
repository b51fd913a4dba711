"""The plain functions of lit_llm.training.lora: targets, head, apply (LoRA and QLoRA on CPU), adapters, merge."""

from __future__ import annotations

import copy
import sys
import warnings

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification, GPT2Config
from transformers import GPT2ForSequenceClassification

from lit_llm.errors import InvalidArgumentError, UserInputError
from lit_llm.training.lora import (
    LoraSpec,
    QuantizationUnavailableError,
    apply_lora,
    check_4bit_available,
    find_head,
    find_lora_targets,
    lora_state_of,
    merge_lora,
    parameter_counts,
    qlora_compute_dtype,
    require_peft,
    save_adapters,
    trainable_parameter_names,
)

IDS = torch.tensor([[1, 5, 7, 9, 2], [3, 4, 8, 8, 1]])


def _bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=20,
        max_position_embeddings=16, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )).eval()


def _spec(model, **kwargs) -> LoraSpec:
    return LoraSpec(targets=find_lora_targets(model), head=find_head(model), **kwargs)


def _perturb_adapters(model) -> None:
    """B starts at zero (the adapted model starts as the base); give the adapters values, as training would."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.add_(torch.randn_like(param) * 0.1)


def test_default_targets_are_the_linear_layers_of_the_blocks():
    targets = find_lora_targets(_bert())
    assert len(targets) == 2 * 6  # query, key, value, attention output, intermediate, output per block
    assert all(t.startswith("bert.encoder.layer.") for t in targets)
    assert find_lora_targets(_bert(), [r"attention\.self\.(query|value)$"]) == [
        "bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.value",
        "bert.encoder.layer.1.attention.self.query", "bert.encoder.layer.1.attention.self.value"]


def test_a_pattern_that_matches_no_layer_lists_the_linear_layers():
    with pytest.raises(InvalidArgumentError, match=r"LoRA patterns=\['q_proj'\] match no Linear layer of "
                                                   r"BertForSequenceClassification\. Its Linear layers are: "
                                                   r"bert\.encoder\.layer\.0\.attention\.self\.query, .*classifier"):
        find_lora_targets(_bert(), ["q_proj"])
    with pytest.raises(InvalidArgumentError, match=r"LoRA patterns=\['\(query'\]: '\(query' is not a regex"):
        find_lora_targets(_bert(), ["(query"])


def test_the_head_is_the_new_task_layer_and_a_tied_lm_head_is_not():
    assert find_head(_bert()) == ["classifier"]
    gpt2 = GPT2ForSequenceClassification(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=30, n_positions=16))
    assert find_head(gpt2) == ["score"]
    mlm = BertForMaskedLM(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=20))
    assert find_head(mlm) == []  # its decoder shares the word embeddings
    assert find_head(torch.nn.Linear(2, 2)) == []


def test_bad_values_are_all_named_at_once():
    with pytest.raises(InvalidArgumentError, match=r"LoRA: rank=0 must be an int >= 1, e\.g\. 8; alpha=-1 must be > 0"
                                                   r".*; dropout=1\.0 must be in \[0, 1\).*; quantize_base='int4' "
                                                   r"must be None \(LoRA\) or 'nf4' \(QLoRA\)\."):
        LoraSpec(targets=[], rank=0, alpha=-1, dropout=1.0, quantize_base="int4")
    assert issubclass(InvalidArgumentError, UserInputError)


def test_apply_freezes_the_base_and_starts_from_the_same_function():
    model = _bert()
    before = model(input_ids=IDS).logits
    spec = _spec(model, rank=4, alpha=8.0)
    apply_lora(model, spec)
    trainable = trainable_parameter_names(model)
    assert trainable and all(".lora_A." in n or ".lora_B." in n or "classifier.modules_to_save." in n
                             for n in trainable)
    assert len([n for n in trainable if "lora_" in n]) == 2 * len(spec.targets)
    torch.testing.assert_close(model(input_ids=IDS).logits, before, rtol=0, atol=0)  # B = 0 at the start
    # A round trip through plain data, as the checkpoint keeps it.
    assert LoraSpec.from_dict(spec.to_dict()) == spec


def test_apply_refuses_targets_and_head_that_are_not_in_the_model():
    with pytest.raises(InvalidArgumentError, match=r"LoRA targets \['nope'\] are not Linear layers of "
                                                   r"BertForSequenceClassification"):
        apply_lora(_bert(), LoraSpec(targets=["nope"]))
    with pytest.raises(InvalidArgumentError, match=r"LoRA head=\['scorer'\]: no such module in "
                                                   r"BertForSequenceClassification \(its children: \['bert', "
                                                   r"'classifier', 'dropout'\]\)"):
        apply_lora(_bert(), LoraSpec(targets=find_lora_targets(_bert()), head=["scorer"]))


def test_merge_gives_a_plain_model_with_the_same_function(tmp_path):
    model = _bert()
    apply_lora(model, _spec(model, rank=4, alpha=8.0))
    _perturb_adapters(model)
    expected = model(input_ids=IDS).logits.detach()
    merged = merge_lora(copy.deepcopy(model))
    assert not any("lora" in n or "modules_to_save" in n or "base_layer" in n for n, _ in merged.named_parameters())
    assert type(merged.bert.encoder.layer[0].attention.self.query) is torch.nn.Linear
    torch.testing.assert_close(merged(input_ids=IDS).logits, expected, rtol=0, atol=1e-6)
    merged.save_pretrained(tmp_path)
    reloaded = BertForSequenceClassification.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded(input_ids=IDS).logits, expected, rtol=0, atol=1e-6)


def test_saved_adapters_load_with_peft_onto_the_base(tmp_path):
    from peft import PeftModel

    base = _bert()
    model = copy.deepcopy(base)
    spec = _spec(model, rank=4, alpha=8.0)
    apply_lora(model, spec)
    _perturb_adapters(model)
    expected = model(input_ids=IDS).logits.detach()
    save_adapters(model, tmp_path / "adapters", spec)
    assert {p.name for p in (tmp_path / "adapters").iterdir()} == {
        "adapter_config.json", "adapter_model.safetensors", "lit_llm_lora.json"}
    with warnings.catch_warnings():  # peft 0.21 reads transformers' deprecated is_gradient_checkpointing
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        loaded = PeftModel.from_pretrained(base, tmp_path / "adapters").eval()
    torch.testing.assert_close(loaded(input_ids=IDS).logits, expected, rtol=0, atol=1e-6)
    with pytest.raises(FileExistsError, match="already holds files"):
        save_adapters(model, tmp_path / "adapters", spec)


def test_qlora_on_cpu_quantizes_the_base_to_nf4_and_trains_bf16_adapters():
    import bitsandbytes as bnb

    model = _bert()
    reference = model(input_ids=IDS).logits.detach()
    apply_lora(model, _spec(model, rank=4, alpha=8.0, quantize_base="nf4"))
    assert parameter_counts(model)[1] == sum(p.numel() for p in _bert().parameters()) + sum(
        p.numel() for n, p in model.named_parameters() if "lora_" in n or "modules_to_save" in n)  # 4-bit: logical
    query = model.bert.encoder.layer[0].attention.self.query
    assert isinstance(query.base_layer, bnb.nn.Linear4bit)
    assert query.base_layer.weight.dtype == torch.uint8  # 4-bit values, two per byte
    assert query.lora_A["default"].weight.dtype == torch.bfloat16
    model.train()
    loss = model(input_ids=IDS, labels=torch.tensor([0, 1])).loss
    loss.backward()
    assert query.lora_A["default"].weight.grad is not None or query.lora_B["default"].weight.grad is not None
    model.eval()
    quantized = model(input_ids=IDS).logits.detach()
    assert (quantized - reference).abs().max() < 0.1  # NF4 error on a random tiny model, not exact
    _perturb_adapters(model)
    expected = model(input_ids=IDS).logits.detach()
    merged = merge_lora(model)
    assert type(merged.bert.encoder.layer[0].attention.self.query) is torch.nn.Linear
    # The merged float model computes with the dequantized NF4 weights in float32, the adapted one in bf16.
    torch.testing.assert_close(merged(input_ids=IDS).logits, expected, rtol=0, atol=2e-2)


def test_qlora_trains_after_a_validation_pass_with_sizes_bitsandbytes_repacks_on_bf16_cpus():
    # Layers of 64 / 128 features are the ones bitsandbytes repacks for its CPU kernel on AVX512-BF16 CPUs at the
    # first eval-mode forward; a training step after that failed there. Elsewhere the path is plain and passes too.
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=30, hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128,
        max_position_embeddings=16, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    ))
    apply_lora(model, _spec(model, rank=4, alpha=8.0, quantize_base="nf4"))
    model.eval()
    with torch.no_grad():
        before = model(input_ids=IDS).logits
    model.train()
    loss = model(input_ids=IDS, labels=torch.tensor([0, 1])).loss
    loss.backward()
    query = model.bert.encoder.layer[0].attention.self.query
    assert query.lora_B["default"].weight.grad is not None
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=IDS).logits, before)  # no step taken: the same function


def test_qlora_computes_in_fp32_when_asked():
    import bitsandbytes as bnb

    model = _bert()
    apply_lora(model, _spec(model, rank=4, alpha=8.0, quantize_base="nf4", compute_dtype="float32"))
    query = model.bert.encoder.layer[0].attention.self.query
    assert isinstance(query.base_layer, bnb.nn.Linear4bit) and query.base_layer.weight.dtype == torch.uint8
    assert query.base_layer.compute_dtype == torch.float32
    assert query.lora_A["default"].weight.dtype == torch.float32
    model.train()
    model(input_ids=IDS, labels=torch.tensor([0, 1])).loss.backward()
    assert query.lora_B["default"].weight.grad is not None
    with pytest.raises(InvalidArgumentError, match=r"compute_dtype='float16' must be one of \['bfloat16', 'float32'\]"):
        LoraSpec(targets=[], compute_dtype="float16")


def test_qlora_compute_dtype_follows_the_cpus_bf16_hardware(monkeypatch):
    from lit_llm.planning import cpu

    def cpu_with(flags: str):
        return lambda: cpu.parse_cpuinfo(f"processor : 0\nmodel name : test\nflags : fpu {flags}\n")

    monkeypatch.setattr(cpu, "read_cpuinfo", cpu_with("avx2"))
    assert qlora_compute_dtype("cpu") == "float32"  # bf16 matmuls would run on torch's slow fallback kernel
    monkeypatch.setattr(cpu, "read_cpuinfo", cpu_with("avx2 avx512f amx_bf16"))
    assert qlora_compute_dtype("cpu") == "bfloat16"
    monkeypatch.setattr(cpu, "read_cpuinfo", cpu_with("avx2 avx512f avx512_bf16"))
    assert qlora_compute_dtype("cpu") == "bfloat16"
    assert qlora_compute_dtype("cuda") == "bfloat16"
    # A spec from a checkpoint written before compute_dtype existed computes in bf16, as those runs did.
    old = {"targets": ["a"], "rank": 4, "alpha": 8.0, "dropout": 0.0, "head": [], "quantize_base": "nf4"}
    assert LoraSpec.from_dict(old).compute_dtype == "bfloat16"
    assert LoraSpec.from_dict({**old, "compute_dtype": "float32"}).compute_dtype == "float32"


def test_qlora_where_bitsandbytes_cannot_run_says_what_can(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    with pytest.raises(QuantizationUnavailableError, match=r"LoRA\(quantize_base='nf4'\) needs bitsandbytes 4-bit, "
                                                           r"which cannot run here: bitsandbytes is not installed.*"
                                                           r"What runs: LoRA without quantization"):
        check_4bit_available("cpu")


def test_lora_state_of_finds_the_callback_state():
    assert lora_state_of({"callbacks": {"Other": {"x": 1}}}) is None
    state = {"format": "lit_llm.lora", "spec": {}}
    assert lora_state_of({"callbacks": {"LoRA{'rank': 2}": state}}) is state


def test_without_peft_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # as if not installed
    with pytest.raises(ImportError, match=r"LoRA needs the peft package: pip install 'lit-llm\[lora\]'"):
        require_peft()
    with pytest.raises(ImportError, match=r"LoRA needs the peft package"):
        apply_lora(_bert(), LoraSpec(targets=["bert.encoder.layer.0.attention.self.query"]))
