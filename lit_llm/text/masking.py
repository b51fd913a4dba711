"""Dynamic masking for masked-LM pre-training: BERT's 80/10/10 rule, token-level or whole-word.

Pure tensor functions, usable in a collator, a training step or a notebook. ``MaskedLanguageModel`` calls
:func:`mask_tokens` on every batch it draws, so each epoch sees a fresh mask (RoBERTa's dynamic masking).

We follow ``transformers.DataCollatorForLanguageModeling.torch_mask_tokens`` (same probabilities, same
order of draws) but do not call it: it builds its probability tensors on the CPU, so it cannot mask a batch
that already sits on the accelerator, and its whole-word mode needs per-document ``offset_mapping`` (which
packing several documents into one block scrambles) and materializes a (B, T, T) tensor. Here word
boundaries come as a ``word_starts`` flag per token, computed at tokenization time from the fast
tokenizer's ``word_ids()`` and packed alongside the ids. For text written without spaces (Chinese), where the
tokenizer's words are single characters, the flags come from a segmenter's words instead
(:mod:`lit_llm.text.segmentation`); the masking itself is the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["MaskingResult", "mask_tokens", "word_start_flags", "IGNORE_INDEX"]

IGNORE_INDEX = -100  # the label value torch's cross_entropy (and every HF model) skips


@dataclass
class MaskingResult:
    """What :func:`mask_tokens` returns.

    Attributes:
        input_ids: the corrupted ids the model reads, (B, T).
        labels: the original id where a token was selected, ``IGNORE_INDEX`` elsewhere, (B, T).
    """

    input_ids: Tensor
    labels: Tensor


def word_start_flags(word_ids: list[int | None]) -> list[int]:
    """1 for a token that starts a word, 0 for a continuation piece or a special token.

    Args:
        word_ids: a fast tokenizer's ``encoding.word_ids(i)`` for one text (None for special tokens).

    Example::
        enc = tokenizer(["unbelievable film"])
        word_start_flags(enc.word_ids(0))  # [0, 1, 0, 0, 1, 0] for [CLS] un ##believ ##able film [SEP]
    """
    flags = []
    previous: int | None = None
    for word in word_ids:
        flags.append(int(word is not None and word != previous))
        previous = word
    return flags


def _selected_tokens(
    probability: float,
    maskable: Tensor,
    word_starts: Tensor | None,
    generator: torch.Generator | None,
) -> Tensor:
    """Which positions become prediction targets, (B, T) bool."""
    shape, device = maskable.shape, maskable.device
    if word_starts is None:
        draw = torch.rand(shape, device=device, generator=generator)  # (B, T)
        return (draw < probability) & maskable
    starts = word_starts.bool().clone()
    # A packed block may begin in the middle of a word: its leading pieces form a word of their own.
    starts[:, 0] = True
    word_index = torch.cumsum(starts.long(), dim=1) - 1  # (B, T): which word of the row each token is in
    # One draw per word slot (a row has at most T words), then every piece of a word takes its word's draw.
    word_draw = torch.rand(shape, device=device, generator=generator)  # (B, T words)
    return (word_draw.gather(1, word_index) < probability) & maskable


def mask_tokens(
    input_ids: Tensor,
    special_tokens_mask: Tensor,
    *,
    mask_token_id: int,
    vocab_size: int,
    mlm_probability: float = 0.15,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
    word_starts: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> MaskingResult:
    """Select ``mlm_probability`` of the tokens as targets and corrupt them as BERT does.

    Of the selected tokens, ``mask_replace_prob`` become ``[MASK]``, ``random_replace_prob`` become a random
    token and the rest stay unchanged. Special tokens and padding (``special_tokens_mask == 1``) are never
    selected. With ``word_starts`` all pieces of a word are selected together (whole-word masking): the
    probability then applies per word. ``input_ids`` is not modified.

    Args:
        input_ids: token ids, (B, T), on any device.
        special_tokens_mask: 1 where a token must never be masked (specials, padding), (B, T).
        mask_token_id: the tokenizer's ``[MASK]`` id.
        vocab_size: random replacements are drawn from ``[0, vocab_size)``.
        mlm_probability: fraction of (word-start) tokens selected, in (0, 1).
        mask_replace_prob: fraction of selected tokens replaced with ``[MASK]``.
        random_replace_prob: fraction of selected tokens replaced with a random token.
        word_starts: optional (B, T) flags from :func:`word_start_flags` for whole-word masking.
        generator: a ``torch.Generator`` on ``input_ids``' device, for reproducible masks.

    Raises:
        ValueError: probabilities outside their range.

    Example::
        out = mask_tokens(batch["input_ids"], batch["special_tokens_mask"], mask_token_id=103, vocab_size=30522)
        loss = model(input_ids=out.input_ids, labels=out.labels).loss
    """
    if not 0.0 < mlm_probability < 1.0:
        raise ValueError(f"mlm_probability={mlm_probability!r} must be in (0, 1), e.g. 0.15 as in BERT.")
    if mask_replace_prob < 0 or random_replace_prob < 0 or mask_replace_prob + random_replace_prob > 1.0:
        raise ValueError(
            f"mask_replace_prob={mask_replace_prob!r} and random_replace_prob={random_replace_prob!r} must be >= 0 "
            "and sum to at most 1 (BERT uses 0.8 and 0.1)."
        )
    maskable = ~special_tokens_mask.bool()
    selected = _selected_tokens(mlm_probability, maskable, word_starts, generator)  # (B, T) bool
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))

    # One uniform draw per token decides its fate: [0, p_mask) -> [MASK], [p_mask, p_mask + p_rand) -> random,
    # the rest -> unchanged. Same distribution as HF's two chained Bernoullis, one kernel fewer.
    fate = torch.rand(input_ids.shape, device=input_ids.device, generator=generator)
    to_mask = selected & (fate < mask_replace_prob)
    to_random = selected & (fate >= mask_replace_prob) & (fate < mask_replace_prob + random_replace_prob)
    random_ids = torch.randint(
        vocab_size, input_ids.shape, device=input_ids.device, dtype=input_ids.dtype, generator=generator
    )
    corrupted = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    corrupted = torch.where(to_random, random_ids, corrupted)
    return MaskingResult(input_ids=corrupted, labels=labels)
