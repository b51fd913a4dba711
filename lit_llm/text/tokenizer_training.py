"""Train a WordPiece (BERT-style) or byte-level BPE (GPT-2-style) tokenizer on a corpus with ``tokenizers``.

For pre-training from scratch: ``TextCorpusDataModule(train_tokenizer="wordpiece")`` calls
:func:`train_tokenizer` on its training texts and saves the result next to the checkpoints, where
``AutoTokenizer.from_pretrained`` (and so ``SequenceClassifier(tokenizer=...)``) reads it back.

Chinese: the WordPiece tokenizer is character-level on Chinese text, as Google's Chinese BERT is. Its
normalizer puts spaces around every CJK ideograph, so each one is a word of its own and the vocabulary learns
each character as a token (Latin words and numbers in the same text still get ``##`` pieces). ``nfkc=True``
also folds full-width forms (``ＷＴＯ１２``, ``，``) into their ASCII forms, so text typed either way shares
tokens; offsets still point into the original text.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from transformers import PreTrainedTokenizerFast

__all__ = ["TokenizerKind", "train_tokenizer"]

TokenizerKind = Literal["wordpiece", "bpe"]

_WORDPIECE_SPECIALS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                       "mask_token": "[MASK]"}
# GPT-2 has only <|endoftext|>; we add a pad and a mask token so the same tokenizer also serves MLM.
_BPE_SPECIALS = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<pad>",
                 "mask_token": "<mask>"}


def _batches(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        if text:
            batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def train_tokenizer(
    texts: Iterable[str],
    kind: TokenizerKind = "wordpiece",
    vocab_size: int = 8000,
    out_dir: str | Path | None = None,
    lowercase: bool = True,
    model_max_length: int = 512,
    nfkc: bool = False,
) -> PreTrainedTokenizerFast:
    """Train a tokenizer on ``texts`` and optionally ``save_pretrained`` it to ``out_dir``.

    Args:
        texts: the training documents (any iterable; consumed once).
        kind: ``"wordpiece"`` (BERT: lowercasing normalizer, ``[CLS] a [SEP]`` template) or ``"bpe"``
            (GPT-2 byte-level BPE: no unknown tokens, no template).
        vocab_size: target vocabulary size, special tokens included.
        out_dir: where to save it; None keeps it in memory only.
        lowercase: lowercase and strip accents (WordPiece only).
        model_max_length: recorded in the tokenizer config.
        nfkc: NFKC-normalize before the rest (WordPiece only): full-width letters, digits and punctuation become
            ASCII, e.g. for Chinese text that mixes both.

    Raises:
        ValueError: unknown ``kind`` or ``vocab_size`` too small.

    Example::
        tokenizer = train_tokenizer(texts, "wordpiece", vocab_size=8000, out_dir="runs/bert/tokenizer")
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if kind not in ("wordpiece", "bpe"):
        raise ValueError(f"train_tokenizer(kind={kind!r}): choose 'wordpiece' (BERT-style) or 'bpe' (GPT-2-style).")
    if nfkc and kind != "wordpiece":
        raise ValueError("train_tokenizer(nfkc=True) is for kind='wordpiece'; byte-level BPE reads raw bytes.")
    if vocab_size < 100:
        raise ValueError(f"train_tokenizer(vocab_size={vocab_size!r}): use at least 100 (BERT uses 30522).")
    trainer: trainers.Trainer
    if kind == "wordpiece":
        specials = _WORDPIECE_SPECIALS
        tok = Tokenizer(models.WordPiece(unk_token=specials["unk_token"]))
        bert = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase, handle_chinese_chars=True)
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), bert]) if nfkc else bert
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(specials.values()))
        tok.train_from_iterator(_batches(texts), trainer=trainer)
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
    else:
        specials = _BPE_SPECIALS
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(dict.fromkeys(specials.values())),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator(_batches(texts), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length, **specials)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(out_dir)
    return tokenizer
