"""Session fixtures: a tiny WordPiece tokenizer and tiny BERT / GPT-2 models saved to disk (no downloads).

Multi-process tests start their workers by fork (``ddp_fork``, ``start_method="fork"``): a forked worker inherits
the imports, where a spawned one re-imports torch and lightning (about 10 s of CPU each), and keeps the suite's
warning filters. The CLI's own ``ddp`` launcher (new processes) is run by the README and CLI tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = (
    "the a an and or but of to in on at for with is was are were be been it this that these those movie film "
    "story plot actor actors acting director good great bad awful boring fun funny sad dull brilliant terrible "
    "best worst love hate loved hated script scene scenes music ending not very too so much more less really "
    "i you he she we they my his her our their one two three new york paris john mary london google apple "
    "city country river music science history war world book books game games team player players"
).split()


def make_tiny_tokenizer(out_dir: Path):
    from transformers import BertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = [".", ",", "!", "?", "'", "-", "##s", "##ed", "##ing", "##ly", "##er"]
    letters = list("abcdefghijklmnopqrstuvwxyz0123456789") + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(specials + pieces + WORDS + letters))}
    tokenizer = BertTokenizer(vocab=vocab, model_max_length=128)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_tokenizer")
    make_tiny_tokenizer(out)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def tiny_bert_config(vocab_size: int, **overrides):
    from transformers import BertConfig

    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    kwargs.update(overrides)
    return BertConfig(**kwargs)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A tiny BERT (hidden 32, 2 layers) saved with its tokenizer, loadable by every AutoModelFor* class."""
    import torch
    from transformers import BertForMaskedLM

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_bert")
    BertForMaskedLM(tiny_bert_config(len(tiny_tokenizer))).save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A tiny GPT-2 (n_embd 32, 2 layers) saved with the tiny WordPiece tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_gpt2")
    config = GPT2Config(
        vocab_size=len(tiny_tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=128,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=tiny_tokenizer.cls_token_id, eos_token_id=tiny_tokenizer.sep_token_id,
        pad_token_id=tiny_tokenizer.pad_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    return out


@pytest.fixture()
def sentiment_csvs(tmp_path) -> dict[str, Path]:
    """Small train / val / test CSVs of a learnable two-class task."""
    import random

    rng = random.Random(0)
    pos = ["good", "great", "brilliant", "fun", "loved", "best"]
    neg = ["bad", "awful", "boring", "dull", "hated", "worst"]
    filler = ["the", "movie", "film", "story", "was", "really", "very", "acting", "script"]

    def rows(n):
        out = []
        for _ in range(n):
            label = rng.choice(["fresh", "rotten"])
            words = rng.sample(filler, 4) + [rng.choice(pos if label == "fresh" else neg)]
            rng.shuffle(words)
            out.append((" ".join(words), label))
        return out

    paths = {}
    for split, n in (("train", 96), ("val", 32), ("test", 32)):
        path = tmp_path / f"{split}.csv"
        with path.open("w") as f:
            f.write("text,label\n")
            for text, label in rows(n):
                f.write(f"{text},{label}\n")
        paths[split] = path
    return paths


@pytest.fixture(autouse=True)
def _private_cpu_peak_cache(request, monkeypatch):
    """No planner test reads or writes the user's cache of measured CPU peaks (each gets its own); returns it."""
    if "planning" not in request.node.path.parts:
        return None
    cache = request.getfixturevalue("tmp_path") / "lit_llm_cache"
    monkeypatch.setenv("LIT_LLM_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(autouse=True)
def _restore_environment():
    """Trainers leak MASTER_PORT / LOCAL_RANK / ... into os.environ; a later multi-process test would then believe
    an external launcher created its processes and wait forever for rank 1. Restore the environment after each test."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True, scope="session")
def _allocator_left_alone():
    """The CLI runs in this process (LitLLMCLI) would set glibc's allocator for the whole test process, which lives
    far longer than a run; they get a stand-in that declines. Child processes (journeys, tests/training/
    test_allocator.py) run the real setting."""
    from lit_llm.training import allocator

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(allocator, "keep_freed_memory", lambda *args, **kwargs: False)
        yield
