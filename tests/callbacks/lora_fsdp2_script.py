"""Standalone: LoRA under TransformerFSDP2 on 2 CPU processes (gloo), with an exact resume from a sharded checkpoint.

Run by tests/callbacks/test_lora.py in a subprocess (Lightning's launcher re-executes the calling script once per
rank, which must not be pytest). Run A trains 2 epochs straight and writes the adapters and the merged model; run B
trains 1 epoch, saving a sharded checkpoint (ModelCheckpoint, during training), and a fresh Trainer resumes
from it for the second epoch. Rank 0
writes both runs' merged weights for the test to compare."""

import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_llm.callbacks import LoRA
from lit_llm.datamodules import TextClassificationDataModule
from lit_llm.modules import SequenceClassifier
from lit_llm.strategies import TransformerFSDP2


def build(tokenizer: str, vocab_size: int) -> SequenceClassifier:
    seed_everything(0)  # the same random base in every run: a LoRA checkpoint holds only the adapters
    config = dict(model_type="bert", vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=2, intermediate_size=37, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
    return SequenceClassifier(config, tokenizer=tokenizer, labels=["fresh", "rotten"], export=False)


def trainer(out: Path, epochs: int, *callbacks: Callback) -> Trainer:
    return Trainer(accelerator="cpu", devices=2, strategy=TransformerFSDP2(), max_epochs=epochs, logger=False,
                   enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
                   enable_progress_bar=False, enable_model_summary=False,
                   num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=out, deterministic=True,
                   callbacks=list(callbacks))


def main(out: Path, tokenizer: str, train: str, vocab_size: int) -> None:
    data = lambda: TextClassificationDataModule(tokenizer, train_file=train, validation_file=train,  # noqa: E731
                                                batch_size=4, seed=0)
    straight = build(tokenizer, vocab_size)
    t = trainer(out / "a", 2, LoRA(rank=2, alpha=4, export_merged=True))
    t.fit(straight, datamodule=data())
    state_a = {k: v.detach().clone() for k, v in straight.model.state_dict().items()}

    first = build(tokenizer, vocab_size)
    t = trainer(out / "b", 1, LoRA(rank=2, alpha=4, export_artifact=False),
                ModelCheckpoint(dirpath=out / "ckpt", save_last=True))
    t.fit(first, datamodule=data())
    resumed = build(tokenizer, vocab_size)
    t = trainer(out / "b", 2, LoRA(rank=2, alpha=4, export_artifact=False))
    t.fit(resumed, datamodule=data(), ckpt_path=out / "ckpt" / "last.ckpt")
    state_b = {k: v.detach().clone() for k, v in resumed.model.state_dict().items()}
    if t.global_rank == 0:
        torch.save({"a": state_a, "b": state_b, "steps": t.global_step}, out / "resume.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]))
