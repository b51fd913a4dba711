"""Fast CPU dropout: the same distribution and scale as torch's, the same gradient rule, reproducible from the seed,
and torch's own layer wherever the fast path does not apply."""

from __future__ import annotations

import math
import pickle
from unittest import mock

import pytest
import torch
from torch import nn

from lit_llm.training import dropout as dropout_mod
from lit_llm.training.dropout import FastDropout, fast_dropout, use_fast_dropout

N = 400_000


def _sigma(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_drop_rate_and_scale_match_torch(dtype, p):
    torch.manual_seed(0)
    x = torch.ones(N, dtype=dtype)
    y = fast_dropout(x, p)
    dropped = y == 0
    # Both halves of each 32-bit draw (even and odd elements in 16-bit) drop at rate p; 5 sigma bounds.
    for part in (dropped, dropped[0::2], dropped[1::2]):
        assert abs(part.double().mean().item() - p) < 5 * _sigma(p, part.numel())
    kept = y[~dropped]
    reference = nn.functional.dropout(torch.ones(64, dtype=dtype), p, training=True)
    assert torch.equal(kept.unique(), reference[reference != 0].unique())  # 1/(1-p) rounded to dtype, as torch
    assert y.dtype == dtype and y.shape == x.shape


def test_every_element_is_kept_or_dropped_independently_of_its_neighbours():
    torch.manual_seed(1)
    # Adjacent elements (the two halves of one 32-bit draw in 16-bit) are uncorrelated: P(both kept) = 1/4.
    for dtype in (torch.float32, torch.bfloat16):
        kept = fast_dropout(torch.ones(N, dtype=dtype), 0.5) != 0
        both = (kept[0::2] & kept[1::2]).double().mean().item()
        assert abs(both - 0.25) < 5 * _sigma(0.25, N // 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_multiplies_by_the_same_mask(dtype):
    torch.manual_seed(2)
    x = torch.randn(3, 5, 7, dtype=dtype, requires_grad=True)
    y = fast_dropout(x, 0.3)
    g = torch.randn_like(y)
    y.backward(g)
    scale = torch.tensor(1 / 0.7, dtype=dtype)  # 1/(1-p) rounded to dtype
    mask = (y != 0).to(dtype) * scale  # x has no zeros
    assert torch.equal(y.detach(), x.detach() * mask)
    assert torch.equal(x.grad, g * mask)


def test_the_same_seed_gives_the_same_masks():
    x = torch.randn(64, 33)
    torch.manual_seed(7)
    a = fast_dropout(x, 0.2)
    torch.manual_seed(7)
    b = fast_dropout(x, 0.2)
    torch.manual_seed(8)
    c = fast_dropout(x, 0.2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_identity_when_not_training_or_p_is_zero_and_zeros_at_p_one():
    x = torch.randn(10, 10)
    assert fast_dropout(x, 0.5, training=False) is x
    assert fast_dropout(x, 0.0) is x
    assert torch.equal(fast_dropout(x, 1.0), torch.zeros_like(x))
    with pytest.raises(ValueError, match=r"fast_dropout\(p=1.5\): p must be in \[0, 1\]"):
        fast_dropout(x, 1.5)


def test_odd_sizes_and_non_contiguous_inputs():
    torch.manual_seed(3)
    x = torch.randn(7, 9, dtype=torch.bfloat16).t()  # 63 elements (odd), not contiguous
    y = fast_dropout(x, 0.5)
    assert y.shape == x.shape
    assert torch.all((y == 0) | torch.isclose(y, 2 * x))


def test_other_devices_dtypes_and_compiled_code_use_torchs_dropout():
    with mock.patch.object(dropout_mod._MaskedScale, "apply", side_effect=AssertionError("fast path")):
        for x in (torch.randn(4, 4, dtype=torch.float64), torch.randn(4, 4, device="meta")):
            fast_dropout(x, 0.5)
            FastDropout(0.5)(x)
        with mock.patch.object(torch.compiler, "is_compiling", return_value=True):
            fast_dropout(torch.randn(4, 4), 0.5)
    layer = FastDropout(0.5).eval()
    x = torch.randn(4, 4)
    assert torch.equal(layer(x), x)


def test_use_fast_dropout_swaps_plain_dropout_layers_in_place(tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification

    class OwnDropout(nn.Dropout):
        pass

    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert_dir), num_labels=2)
    model.extra = OwnDropout(0.2)
    plain = [m for m in model.modules() if type(m) is nn.Dropout]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert use_fast_dropout(model) == len(plain) > 0
    assert all(type(m) is FastDropout for m in plain)  # the same objects, with their p
    assert type(model.extra) is OwnDropout
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert use_fast_dropout(model) == 0
    pickle.loads(pickle.dumps(FastDropout(0.3)))  # deepcopy / spawn can carry it


def test_our_modules_train_with_fast_dropout(tmp_path, tiny_tokenizer, tiny_tokenizer_dir, sentiment_csvs):
    from lightning.pytorch import Trainer
    from transformers import BertModel

    from lit_llm.datamodules import TextClassificationDataModule
    from lit_llm.modules import SequenceClassifier
    from conftest import tiny_bert_config

    BertModel(tiny_bert_config(len(tiny_tokenizer), hidden_dropout_prob=0.1)).save_pretrained(tmp_path / "bert")
    module = SequenceClassifier(str(tmp_path / "bert"), export=False)
    data = TextClassificationDataModule(str(tiny_tokenizer_dir), train_file=str(sentiment_csvs["train"]),
                                        batch_size=8)
    with mock.patch.object(dropout_mod._MaskedScale, "apply", wraps=dropout_mod._MaskedScale.apply) as fast:
        Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=0).fit(module, data)
    calls = [call.args[1] for call in fast.call_args_list]
    assert calls and set(calls) == {module.model.config.hidden_dropout_prob}
    assert any(isinstance(m, FastDropout) for m in module.model.modules())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradient_checkpointing_recomputes_the_same_masks(dtype):
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(16, 16), FastDropout(0.5), nn.Linear(16, 16)).to(dtype)
    x = torch.randn(8, 16, dtype=dtype, requires_grad=True)
    torch.manual_seed(1)
    plain = block(x)
    plain.sum().backward()
    expected = x.grad.clone()
    x.grad = None
    torch.manual_seed(1)
    recomputed = checkpoint(block, x, use_reentrant=False)  # the forward runs again in the backward
    recomputed.sum().backward()
    assert torch.equal(plain, recomputed) and torch.equal(x.grad, expected)


@pytest.mark.parametrize("dtype, bits", [(torch.bfloat16, 15), (torch.float16, 15), (torch.float32, 31)])
@pytest.mark.parametrize("p", [0.1495, 0.3, 0.7495])
def test_kept_elements_are_scaled_by_one_over_one_minus_the_probability_applied(dtype, bits, p):
    applied = round(p * 2**bits) / 2**bits
    torch.manual_seed(4)
    y = fast_dropout(torch.ones(50_000, dtype=dtype), p)
    assert torch.equal(y[y != 0].unique(), torch.tensor([1 / (1 - applied)], dtype=dtype))


def test_a_probability_the_bits_cannot_resolve_runs_torchs_dropout():
    x16, x32 = torch.ones(1000, dtype=torch.bfloat16), torch.ones(1000)
    with mock.patch.object(dropout_mod._MaskedScale, "apply", side_effect=AssertionError("fast path")):
        fast_dropout(x16, 1e-4)  # 3 / 32768 would apply 0.0000916: 8% off
        fast_dropout(x16, 1e-6)  # would round to 0: no dropout at all
    with mock.patch.object(dropout_mod._MaskedScale, "apply", wraps=dropout_mod._MaskedScale.apply) as fast:
        fast_dropout(x32, 1e-4)  # 31 bits resolve it
        fast_dropout(x16, 0.02)
    assert fast.call_count == 2


def test_an_inplace_layer_runs_torchs_inplace_dropout():
    x = torch.ones(1000)
    torch.manual_seed(5)
    out = FastDropout(0.5, inplace=True)(x)
    assert out is x and (x == 0).any()


def test_lora_adapters_input_dropout_uses_it_and_the_rest_of_a_users_model_is_left_alone(tiny_tokenizer):
    from transformers import BertForSequenceClassification

    from conftest import tiny_bert_config
    from lit_llm.training.lora import LoraSpec, apply_lora, find_lora_targets

    model = BertForSequenceClassification(tiny_bert_config(len(tiny_tokenizer), hidden_dropout_prob=0.1))
    apply_lora(model, LoraSpec(targets=find_lora_targets(model), dropout=0.1))
    adapters = [m for name, m in model.named_modules() if ".lora_dropout." in name]
    assert adapters and all(type(m) is FastDropout for m in adapters)
    others = [m for name, m in model.named_modules() if isinstance(m, nn.Dropout) and "lora_dropout" not in name]
    assert others and all(type(m) is nn.Dropout for m in others)


# ---------------------------------------------------------------- attention-probability dropout (sdpa)
def _qkv(batch=2, heads=2, q=5, k=5, dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, n, dim, generator=g) for n in (q, k, k)]


class _Attention(nn.Module):
    def __init__(self, causal: bool) -> None:
        super().__init__()
        self.is_causal = causal


@pytest.mark.parametrize("case", ["padding", "causal", "additive", "none"])
def test_sdpa_with_fast_dropout_is_sdpas_math_with_the_masks_applied_to_the_probabilities(case):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from lit_llm.training.dropout import sdpa_with_fast_dropout

    q, k, v = _qkv()
    module = _Attention(causal=case == "causal").train()
    mask = None
    if case == "padding":  # the last two keys of the second sequence are padding
        mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
        mask[1, :, :, 3:] = False
    elif case == "additive":
        mask = torch.randn(2, 1, 5, 5)
    drop = (torch.rand(2, 2, 5, 5, generator=torch.Generator().manual_seed(1)) > 0.3) / 0.7
    with mock.patch.object(dropout_mod._MaskedScale, "apply", side_effect=lambda probs, p: probs * drop):
        out, _ = sdpa_with_fast_dropout(module, q, k, v, mask, dropout=0.3)
    # The reference: the same masks on the probabilities of torch's math (dropout 0, then the mask by hand).
    scores = q @ k.transpose(-2, -1) / 2.0  # D = 4: scale 1/2
    if case == "padding":
        scores = scores.masked_fill(~mask, float("-inf"))
    elif case == "additive":
        scores = scores + mask
    elif case == "causal":
        scores = scores.masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), float("-inf"))
    expected = ((scores.softmax(-1) * drop) @ v).transpose(1, 2)
    assert out.shape == (2, 5, 2, 4)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # Without dropping anything it is transformers' sdpa attention.
    with mock.patch.object(dropout_mod._MaskedScale, "apply", side_effect=lambda probs, p: probs):
        same, _ = sdpa_with_fast_dropout(module, q, k, v, mask, dropout=0.3)
    reference, _ = sdpa_attention_forward(module, q, k, v, mask, dropout=0.0)
    torch.testing.assert_close(same, reference, atol=1e-5, rtol=1e-5)


def test_sdpa_with_fast_dropout_leaves_everything_else_to_transformers():
    from lit_llm.training.dropout import sdpa_with_fast_dropout

    q, k, v = _qkv()
    train, evaluation = _Attention(False).train(), _Attention(False).eval()
    grouped = _Attention(False).train()
    grouped.num_key_value_groups = 2
    target = "transformers.integrations.sdpa_attention.sdpa_attention_forward"
    with mock.patch(target, return_value=("sdpa", None)) as sdpa, \
            mock.patch.object(dropout_mod._MaskedScale, "apply", side_effect=AssertionError("fast path")):
        for module, p, x in [(evaluation, 0.1, q), (train, 0.0, q), (grouped, 0.1, q), (train, 0.1, q.double())]:
            assert sdpa_with_fast_dropout(module, x, k, v, None, dropout=p)[0] == "sdpa"
    assert sdpa.call_count == 4


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "gpt2"])
def test_an_hf_model_runs_its_attention_dropout_through_it_and_exports_as_sdpa(arch, tmp_path, tiny_tokenizer):
    from transformers import (
        AutoModel,
        BertModel,
        DistilBertConfig,
        DistilBertModel,
        GPT2Config,
        GPT2Model,
        RobertaConfig,
        RobertaModel,
    )

    from conftest import tiny_bert_config
    from lit_llm.training.dropout import ATTENTION

    if arch == "bert":
        model = BertModel(tiny_bert_config(len(tiny_tokenizer), hidden_dropout_prob=0.1,
                                           attention_probs_dropout_prob=0.2))
    elif arch == "roberta":
        model = RobertaModel(RobertaConfig(vocab_size=len(tiny_tokenizer), hidden_size=16, num_hidden_layers=2,
                                           num_attention_heads=2, intermediate_size=32, max_position_embeddings=40,
                                           hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.2))
    elif arch == "distilbert":  # its config names the two rates dropout / attention_dropout
        model = DistilBertModel(DistilBertConfig(vocab_size=len(tiny_tokenizer), dim=16, n_layers=2, n_heads=2,
                                                 hidden_dim=32, max_position_embeddings=32, dropout=0.1,
                                                 attention_dropout=0.2))
    else:
        model = GPT2Model(GPT2Config(vocab_size=len(tiny_tokenizer), n_embd=16, n_layer=2, n_head=2, n_positions=32,
                                     attn_pdrop=0.2, resid_pdrop=0.1, embd_pdrop=0.1))
    assert model.config._attn_implementation == "sdpa"
    ids = torch.randint(5, len(tiny_tokenizer), (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    before = model.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
    use_fast_dropout(model)
    assert model.config._attn_implementation == ATTENTION
    after = model(input_ids=ids, attention_mask=mask).last_hidden_state  # evaluation: transformers' sdpa
    assert torch.equal(before, after)
    with mock.patch.object(dropout_mod._MaskedScale, "apply", wraps=dropout_mod._MaskedScale.apply) as fast:
        model.train()(input_ids=ids, attention_mask=mask).last_hidden_state.sum().backward()
    calls = [call.args[1] for call in fast.call_args_list]
    assert 0.2 in calls and 0.1 in calls  # attention probabilities and hidden states
    model.save_pretrained(tmp_path / "export")
    assert ATTENTION not in (tmp_path / "export" / "config.json").read_text()
    assert AutoModel.from_pretrained(tmp_path / "export").config._attn_implementation == "sdpa"


def test_sdpa_with_fast_dropout_in_bf16_is_torchs_fp32_math_and_a_query_with_no_key_gets_zeros():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from lit_llm.training.dropout import sdpa_with_fast_dropout

    q, k, v = (t.to(torch.bfloat16) * 3 for t in _qkv(q=6, k=6, dim=32))
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool)
    mask[0, :, 1, :] = False  # query 1 of the first sequence sees no key (left padding in a causal model)
    with mock.patch.object(dropout_mod._MaskedScale, "apply", side_effect=lambda probs, p: probs):
        ours, _ = sdpa_with_fast_dropout(_Attention(False).train(), q, k, v, mask, dropout=0.1)
    with sdpa_kernel(SDPBackend.MATH):
        torchs = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
    assert ours.dtype == torch.bfloat16
    assert torch.equal(ours[0, 1], torch.zeros_like(ours[0, 1]))
    torch.testing.assert_close(ours, torchs, atol=0, rtol=2**-7)  # at most the last bf16 bit apart


def test_a_model_without_attention_dropout_keeps_sdpa_and_the_name_is_registered_at_import(tiny_bert_dir):
    from transformers import AttentionInterface, AutoModel

    from lit_llm.training.dropout import ATTENTION

    assert ATTENTION in AttentionInterface._global_mapping
    model = AutoModel.from_pretrained(tiny_bert_dir)  # the session's tiny BERT: no dropout anywhere
    use_fast_dropout(model)
    assert model.config._attn_implementation == "sdpa"
