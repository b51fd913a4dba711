"""Standalone: TransformerFSDP2 on 2 CPU processes (gloo), both checks of tests/strategies/test_fsdp.py in one launch
(starting the two ranks costs more than the tiny fits; Lightning's subprocess launcher re-executes this script once
per rank, and each later Trainer reuses the process group).

1. ``<out>/train``: train a tiny SequenceClassifier 3 steps, save a sharded checkpoint, record what each rank held.
2. ``<out>/resume``: exact resume from a sharded checkpoint (fsdp2_resume_script.py)."""

import json
import sys
from pathlib import Path

import torch
from fsdp2_resume_script import main as resume_main
from lightning.pytorch import Trainer, seed_everything

from lit_llm.datamodules import TextClassificationDataModule
from lit_llm.modules import SequenceClassifier
from lit_llm.strategies import TransformerFSDP2


def main(out: Path, tokenizer: str, train: str, vocab_size: int) -> None:
    seed_everything(0)
    config = dict(model_type="bert", vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=2, intermediate_size=37, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
    model = SequenceClassifier(config, tokenizer=tokenizer, labels=["fresh", "rotten"], export=False)
    data = TextClassificationDataModule(tokenizer, train_file=train, validation_file=train, batch_size=4)
    trainer = Trainer(accelerator="cpu", devices=2, strategy=TransformerFSDP2(), max_steps=3, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=out)
    trainer.fit(model, datamodule=data)
    from torch.distributed.tensor import DTensor

    query = model.model.bert.encoder.layer[0].attention.self.query.weight
    record = {"rank": trainer.global_rank, "world_size": trainer.world_size, "is_dtensor": isinstance(query, DTensor),
              "local_rows": query.to_local().shape[0] if isinstance(query, DTensor) else query.shape[0],
              "global_step": trainer.global_step}
    trainer.save_checkpoint(out / "sharded.ckpt")
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if trainer.global_rank == 0:
        torch.save(full, out / "full_state.pt")
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    root, tokenizer, vocab_size = Path(sys.argv[1]), sys.argv[2], int(sys.argv[5])
    main(root / "train", tokenizer, sys.argv[3], vocab_size)
    if sys.argv[4] != "-":  # "-": the sharded training only (tests/test_export_cli_checkpoints.py)
        resume_main(root / "resume", tokenizer, sys.argv[4], vocab_size)  # deterministic: after the first part
