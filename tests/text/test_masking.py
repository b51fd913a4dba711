"""Dynamic masking: 80/10/10 rates, specials never masked, whole words together, reproducible."""

from __future__ import annotations

import pytest
import torch

from lit_llm.text.masking import IGNORE_INDEX, mask_tokens, word_start_flags

MASK, VOCAB = 4, 1000


def batch(rows: int = 64, length: int = 128):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(10, VOCAB, (rows, length), generator=gen)
    special = torch.zeros_like(ids)
    special[:, 0] = special[:, -1] = 1  # [CLS] ... [SEP]
    special[:, 100:] = 1  # padding tail
    return ids, special


def test_rates_and_specials():
    ids, special = batch(256)
    out = mask_tokens(ids, special, mask_token_id=MASK, vocab_size=VOCAB, generator=torch.Generator().manual_seed(1))
    selected = out.labels != IGNORE_INDEX
    maskable = special == 0
    assert not (selected & ~maskable).any()  # specials and padding never selected
    assert (out.input_ids[~selected] == ids[~selected]).all()  # unselected tokens untouched
    assert (out.labels[selected] == ids[selected]).all()  # targets are the original tokens
    rate = selected.sum() / maskable.sum()
    assert 0.14 < rate < 0.16
    n = selected.sum()
    as_mask = (out.input_ids == MASK)[selected].sum() / n
    unchanged = (out.input_ids == ids)[selected].sum() / n
    assert 0.77 < as_mask < 0.83
    assert 0.075 < unchanged < 0.125  # the 10% kept plus random draws that hit the same id (1 in 1000)
    assert (out.input_ids >= 0).all() and (out.input_ids < VOCAB).all()


def test_input_not_modified_and_reproducible():
    ids, special = batch(4, 16)
    before = ids.clone()
    a = mask_tokens(ids, special, mask_token_id=MASK, vocab_size=VOCAB, generator=torch.Generator().manual_seed(3))
    b = mask_tokens(ids, special, mask_token_id=MASK, vocab_size=VOCAB, generator=torch.Generator().manual_seed(3))
    assert torch.equal(ids, before)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)


def test_whole_word_masking_selects_all_pieces():
    ids, special = batch(32, 128)
    # words of 1 to 3 pieces
    starts = torch.zeros_like(ids)
    starts[:, ::3] = 1
    starts[:, 1::6] = 1
    starts[special == 1] = 0
    out = mask_tokens(ids, special, mask_token_id=MASK, vocab_size=VOCAB, mlm_probability=0.3, word_starts=starts,
                      generator=torch.Generator().manual_seed(0))
    selected = out.labels != IGNORE_INDEX
    word = torch.cumsum(starts, 1)
    for r in range(ids.shape[0]):
        for w in word[r][special[r] == 0].unique():
            members = selected[r][(word[r] == w) & (special[r] == 0)]
            assert members.all() or not members.any()  # a word is masked whole or not at all
    assert not (selected & (special == 1)).any()
    words_selected = (selected & (starts == 1)).sum() / ((starts == 1) & (special == 0)).sum()
    assert 0.25 < words_selected < 0.35  # the probability applies per word


def test_block_starting_mid_word():
    ids = torch.tensor([[11, 12, 13, 14]])
    starts = torch.tensor([[0, 0, 1, 0]])  # the block begins with the tail of a word cut by packing
    for seed in range(20):
        out = mask_tokens(ids, torch.zeros_like(ids), mask_token_id=MASK, vocab_size=VOCAB, mlm_probability=0.5,
                          word_starts=starts, generator=torch.Generator().manual_seed(seed))
        sel = (out.labels != IGNORE_INDEX)[0].tolist()
        assert sel[0] == sel[1] and sel[2] == sel[3]


def test_word_start_flags(tiny_tokenizer):
    enc = tiny_tokenizer(["playing good"])
    flags = word_start_flags(enc.word_ids(0))
    tokens = tiny_tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
    assert len(flags) == len(tokens)
    assert flags[0] == 0 and flags[-1] == 0  # [CLS], [SEP]
    assert [f for t, f in zip(tokens, flags) if t.startswith("##")] == [0] * sum(t.startswith("##") for t in tokens)
    assert sum(flags) == 2


def test_bad_probabilities():
    ids, special = batch(1, 4)
    with pytest.raises(ValueError, match=r"mlm_probability=1.5 must be in \(0, 1\)"):
        mask_tokens(ids, special, mask_token_id=MASK, vocab_size=VOCAB, mlm_probability=1.5)
    with pytest.raises(ValueError, match=r"mask_replace_prob=0.9 and random_replace_prob=0.2"):
        mask_tokens(ids, special, mask_token_id=MASK, vocab_size=VOCAB, mask_replace_prob=0.9, random_replace_prob=0.2)
