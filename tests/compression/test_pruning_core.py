"""The pruning core: cubic schedule, exact-count masks, structured masks and exact shrinking."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from lit_llm.compression.pruning import (
    apply_masks,
    cubic_sparsity,
    find_target_linears,
    magnitude_masks,
    measure_sparsity,
    resize_structured,
    shrink_structured,
    structured_masks,
)


def _bert(**overrides) -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
               max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2)
    cfg.update(overrides)
    return BertForSequenceClassification(BertConfig(**cfg)).eval()


def test_cubic_schedule_values():
    assert cubic_sparsity(0, 0.8, 10, 110) == 0.0  # before start
    assert cubic_sparsity(10, 0.8, 10, 110) == 0.0  # s_i at t0
    assert cubic_sparsity(60, 0.8, 10, 110) == pytest.approx(0.8 * (1 - 0.5**3))  # 0.7
    assert cubic_sparsity(110, 0.8, 10, 110) == 0.8
    assert cubic_sparsity(500, 0.8, 10, 110) == 0.8
    assert cubic_sparsity(5, 0.5, 5, 5) == 0.5  # one-shot


def test_default_targets_are_block_linears_only():
    model = _bert()
    names = set(find_target_linears(model))
    assert len(names) == 2 * 6  # q, k, v, attn out, intermediate, output per block
    assert all(".encoder.layer." in n for n in names)
    assert not any("classifier" in n or "pooler" in n or "embeddings" in n for n in names)


def test_pattern_matching_nothing_is_an_error():
    with pytest.raises(ValueError, match=r"match no Linear layer of BertForSequenceClassification"):
        find_target_linears(_bert(), [r"decoder\.nothing"])


@pytest.mark.parametrize("amount", [-0.1, 1.0, 1.5])
def test_amount_outside_unit_interval(amount):
    with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
        magnitude_masks(_bert(), amount)


def test_global_masks_prune_exact_count_of_smallest():
    model = _bert()
    masks = magnitude_masks(model, 0.5)
    params = dict(model.named_parameters())
    total = sum(m.numel() for m in masks.values())
    pruned = sum(int((~m).sum()) for m in masks.values())
    assert pruned == round(0.5 * total)
    # every pruned weight is no larger than every kept weight
    largest_pruned = max(params[k].abs()[~m].max() for k, m in masks.items() if (~m).any())
    smallest_kept = min(params[k].abs()[m].min() for k, m in masks.items())
    assert largest_pruned <= smallest_kept
    apply_masks(model, masks)
    assert measure_sparsity(model, masks) == (pruned, total)


def test_per_layer_masks_prune_each_layer_equally():
    masks = magnitude_masks(_bert(), 0.25, scope="per_layer")
    for m in masks.values():
        assert int((~m).sum()) == round(0.25 * m.numel())


def test_growing_schedule_never_revives_pruned_weights():
    model = _bert()
    first = magnitude_masks(model, 0.3)
    apply_masks(model, first)
    with torch.no_grad():  # a step that moves pruned weights away from zero (as Adam momentum does)
        for p in model.parameters():
            p.add_(0.5)
    second = magnitude_masks(model, 0.6, previous=first)
    for key in first:
        assert not (second[key] & ~first[key]).any()


def test_structured_heads_and_neurons_then_shrink_is_exact():
    model = _bert()
    masks = structured_masks(model, heads=0.5, neurons=0.25, scope="per_layer")
    apply_masks(model, masks)
    ids = torch.randint(0, 50, (3, 10))
    before = model(input_ids=ids).logits
    removed = shrink_structured(model)
    assert removed == {"heads_removed": 4, "neurons_removed": 20}  # 2 of 4 heads, 10 of 40 neurons, x 2 layers
    attn = model.bert.encoder.layer[0].attention.self
    assert attn.query.out_features == 16 and attn.num_attention_heads == 2
    assert model.bert.encoder.layer[1].intermediate.dense.out_features == 30
    torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=1e-5, atol=1e-5)
    assert shrink_structured(model) == {"heads_removed": 0, "neurons_removed": 0}  # idempotent


def test_structured_global_keeps_at_least_one_head_per_block():
    model = _bert()
    with torch.no_grad():  # make block 0 tiny so a global ranking would take all its heads
        for p in model.bert.encoder.layer[0].attention.parameters():
            p.mul_(1e-3)
    masks = structured_masks(model, heads=0.5)
    key = "bert.encoder.layer.0.attention.output.dense.weight"
    heads_kept = masks[key].any(0).view(4, 8).any(1)
    assert int(heads_kept.sum()) == 1


def test_structured_on_a_non_bert_model_is_an_error():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"needs BERT-style blocks.*Use mode='unstructured'"):
        structured_masks(model, heads=0.3)


def test_apply_masks_with_unknown_parameter_is_an_error():
    with pytest.raises(KeyError, match=r"no such parameter"):
        apply_masks(_bert(), {"nope.weight": torch.ones(1, dtype=torch.bool)})


def test_resize_structured_gives_blocks_the_recorded_widths():
    model = _bert()
    resize_structured(model, {"bert.encoder.layer.1": (3, 25)})
    layer = model.bert.encoder.layer[1]
    assert layer.attention.self.query.weight.shape == (24, 32) and layer.attention.output.dense.in_features == 24
    assert layer.attention.self.num_attention_heads == 3 and layer.attention.self.all_head_size == 24
    assert layer.intermediate.dense.out_features == 25 and layer.output.dense.in_features == 25
    assert model.bert.encoder.layer[0].intermediate.dense.out_features == 40  # blocks not named keep their size
    model(input_ids=torch.ones(1, 5, dtype=torch.long))  # still runs
    with pytest.raises(ValueError, match=r"bert.encoder.layer.0: 5 heads / FFN width 40 do not fit a block of 4"):
        resize_structured(model, {"bert.encoder.layer.0": (5, 40)})
    with pytest.raises(KeyError, match=r"'encoder.layer.0' is not a transformer block of"):
        resize_structured(model, {"encoder.layer.0": (1, 1)})
