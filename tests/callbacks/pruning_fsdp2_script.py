"""Standalone: gradual pruning of a tiny BERT sharded with FSDP2 (ModelParallelStrategy, 2 CPU processes, gloo).

Run by tests/callbacks/test_pruning.py in a subprocess: Lightning's subprocess launcher re-executes the calling
script once per rank, which must not be pytest.
"""

import json
import sys
from pathlib import Path

from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).parent))
from compression_helpers import UserClassifier, loader  # noqa: E402

from lit_llm.callbacks import Pruning  # noqa: E402


class ShardedClassifier(UserClassifier):
    def configure_model(self) -> None:
        mesh = self.device_mesh["data_parallel"]
        for block in self.model.bert.encoder.layer:
            fully_shard(block, mesh=mesh)
        fully_shard(self.model, mesh=mesh)


def main(out: Path) -> None:
    seed_everything(0)
    pruning = Pruning(amount=0.5, start_step=0, end_step=2, frequency=1)
    model = ShardedClassifier()
    trainer = Trainer(
        accelerator="cpu", devices=2, strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
        max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[pruning], default_root_dir=out,
    )
    trainer.fit(model, loader())
    params = dict(model.named_parameters())
    zeros = total = 0
    local_rows = None
    for key in pruning.final_masks:
        full = params[key].full_tensor()  # collective: every rank runs it in the same order
        zeros += int((full == 0).sum())
        total += full.numel()
        local_rows = params[key].to_local().shape[0]
    record = {
        "rank": trainer.global_rank,
        "zeros": zeros,
        "total": total,
        "logged": float(trainer.callback_metrics["pruning/sparsity"]),
        "is_dtensor": hasattr(params[next(iter(pruning.final_masks))], "to_local"),
        "local_rows": local_rows,
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
