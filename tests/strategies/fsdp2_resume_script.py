"""TransformerFSDP2 on 2 CPU processes, exact resume from a sharded checkpoint (run by fsdp2_script.py, in the same
launch as its sharded training; standalone too).

Run A trains 2 epochs straight. Run B trains 1 epoch, saves a sharded checkpoint, and a fresh Trainer resumes
from it for the second epoch. Rank 0 writes both runs' gathered weights for the test to compare."""

import sys
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything

from lit_llm.datamodules import TextClassificationDataModule
from lit_llm.modules import SequenceClassifier
from lit_llm.strategies import TransformerFSDP2


def build(tokenizer: str, vocab_size: int) -> SequenceClassifier:
    seed_everything(0)
    config = dict(model_type="bert", vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=2, intermediate_size=37, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
    return SequenceClassifier(config, tokenizer=tokenizer, labels=["fresh", "rotten"], export=False)


def trainer(out: Path, epochs: int) -> Trainer:
    return Trainer(accelerator="cpu", devices=2, strategy=TransformerFSDP2(), max_epochs=epochs, logger=False,
                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=out, deterministic=True)


def full_state(model: SequenceClassifier) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def main(out: Path, tokenizer: str, train: str, vocab_size: int) -> None:
    data = lambda: TextClassificationDataModule(tokenizer, train_file=train, validation_file=train,  # noqa: E731
                                                batch_size=4, seed=0)
    straight = build(tokenizer, vocab_size)
    t = trainer(out / "a", 2)
    t.fit(straight, datamodule=data())
    state_a = full_state(straight)

    first = build(tokenizer, vocab_size)
    t = trainer(out / "b", 1)
    t.fit(first, datamodule=data())
    t.save_checkpoint(out / "epoch1.ckpt")
    resumed = build(tokenizer, vocab_size)
    t = trainer(out / "b", 2)
    t.fit(resumed, datamodule=data(), ckpt_path=out / "epoch1.ckpt")
    state_b = full_state(resumed)
    if t.global_rank == 0:
        torch.save({"a": state_a, "b": state_b, "steps": t.global_step}, out / "resume.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]))
