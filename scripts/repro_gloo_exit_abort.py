"""Reproduction for an upstream report: a CPU ``ddp_spawn`` worker that exits with its gloo process group alive.

Lightning 2.6.6 destroys the process group at exit only for NCCL; with gloo the group, its C++ threads and their
pending work live on into interpreter finalization. In this project's CI that aborted a worker now and then
(SIGABRT, "terminate called without an active exception", after ``fit`` had returned), seen 2 of 5 CI runs
across ~12 two-process tests. pytorch/pytorch PR #179291 describes the same mechanism. lit-llm's workaround is
``lit_llm.compat.destroy_process_group_at_exit`` (registered on ``import lit_llm``).

    python scripts/repro_gloo_exit_abort.py --runs 20            # plain Lightning: count aborted workers
    python scripts/repro_gloo_exit_abort.py --runs 20 --destroy  # with the atexit destroy of the workaround

The abort is rare and timing-dependent: a run of this script that sees none does not prove its absence.
"""

from __future__ import annotations

import argparse
import atexit

import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel


class _Model(BoringModel):
    def __init__(self, destroy: bool) -> None:
        super().__init__()
        self.destroy = destroy

    def setup(self, stage: str) -> None:  # runs in each spawned worker
        if self.destroy:
            atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--destroy", action="store_true", help="destroy the process group at exit in each worker")
    args = parser.parse_args()
    aborted = 0
    for _ in range(args.runs):
        trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=5, logger=False,
                          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        try:
            trainer.fit(_Model(args.destroy))
        except mp.ProcessExitedException as err:
            aborted += 1
            print(f"worker aborted: {err}", flush=True)
    print(f"{aborted} of {args.runs} runs had a worker abort (destroy at exit: {args.destroy})")


if __name__ == "__main__":
    main()
