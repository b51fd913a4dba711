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
    kept = fast_dropout(torch.ones(N), 0.5) != 0
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
    calls = []
    real = dropout_mod._MaskedScale.apply

    def counting(*args):
        calls.append(args[1])
        return real(*args)

    with mock.patch.object(dropout_mod._MaskedScale, "apply", side_effect=counting):
        Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=0).fit(module, data)
    assert calls and set(calls) == {module.model.config.hidden_dropout_prob}
    assert any(isinstance(m, FastDropout) for m in module.model.modules())
