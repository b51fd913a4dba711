"""``LitLLMCLI``: LightningCLI with run directories, W&B config logging, ``--test_after_fit`` and a closing summary.

What ``lit-llm fit / validate / test / predict`` runs (through :func:`lit_llm.cli.main`), and what ``lit-llm tune``
runs for each trial. Each step is a function of :mod:`lit_llm.commands` (``run_dirs``, ``loggers``,
``predictions``, ``trainer_defaults``, ``summary``); this class only says when each one runs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from lit_llm.commands.loggers import (
    LoggedSaveConfig,
    configure_wandb_mode,
    finish_loggers,
    loggers_into_run_dir,
)
from lit_llm.commands.predictions import JsonlPredictionWriter, default_prediction_file
from lit_llm.commands.run_dirs import (
    checkpoints_into_run_dir,
    keep_earlier_outputs,
    prepare_run_dir,
    save_config_beside_earlier,
)
from lit_llm.commands.summary import print_summary
from lit_llm.commands.trainer_defaults import (
    add_exact_resume,
    add_plain_progress_bar,
    add_stage_times,
    cpu_allocator,
    fastest_precision,
    use_atomic_checkpoint_io,
)
from lit_llm.commands.user_errors import validate_ckpt_path
from lit_llm.training.allocator import release_freed_memory

__all__ = ["LitLLMCLI"]


class LitLLMCLI(LightningCLI):
    """LightningCLI with run directories, W&B config logging, ``--test_after_fit`` and a closing summary.

    Each step is a function of :mod:`lit_llm.commands` (``run_dirs``, ``loggers``, ``predictions``,
    ``trainer_defaults``, ``summary``, ``user_errors``); this class only says when each one runs.
    """

    run_dir: Path  # set before the classes are instantiated, for every subcommand
    resumed_from: Path | None = None  # the checkpoint a `fit --ckpt_path` run continues from
    _prediction_file: Path | None = None  # where `predict` writes when the config names no prediction writer
    _allocator_tuned = False  # lit_llm.training.allocator applied for this run's CPU trainer
    # kept as a method: tests/test_resume.py calls LitLLMCLI._keep_earlier_outputs
    _keep_earlier_outputs = staticmethod(keep_earlier_outputs)

    _ran_in_process = False  # whether an earlier LitLLMCLI ran in this process (tune trials, benchmarks)

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        # The first run's start-up counts from process start (imports included); a later run in the same process
        # counts from here, or it would include the earlier runs.
        self._began = time.time() if LitLLMCLI._ran_in_process else None
        LitLLMCLI._ran_in_process = True
        configure_wandb_mode()
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=LoggedSaveConfig,
            args=args,
            run=run,
            auto_configure_optimizers=True,
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        if sub:  # before LightningCLI loads the checkpoint's hyperparameters
            validate_ckpt_path(self.config[sub].get("ckpt_path"))

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--test_after_fit", type=bool, default=False, help="After fit, test the best checkpoint.")
        parser.add_argument("--run_root", type=str, default="runs", help="Parent folder of the run directories.")
        parser.add_argument("--run_name", type=str | None, default=None, help="Run folder name (default: config name).")
        parser.add_argument(
            "--fastest_precision", type=bool, default=False,
            help="Set trainer.precision to the fastest this machine runs at full accuracy: bf16-mixed on a GPU or "
            "CPU with bf16 hardware (AMX / AVX512-BF16), 16-mixed on an older GPU, else 32-true.",
        )

    # ---------------------------------------------------------------- before the run
    def before_instantiate_classes(self) -> None:
        sub = self.subcommand
        if sub is None:
            return
        cfg = self.config[sub]
        if cfg.get("fastest_precision"):
            precision, why = fastest_precision(cfg.trainer.get("accelerator"))
            if precision is not None:
                cfg.trainer.precision = precision  # before the config is saved: the run's config.yaml records it
            rank_zero_info(f"--fastest_precision: trainer.precision = {cfg.trainer.get('precision')} ({why})")
        self.run_dir, self.resumed_from = prepare_run_dir(cfg, fit=sub == "fit")
        cfg.trainer.default_root_dir = str(self.run_dir)
        loggers_into_run_dir(cfg.trainer.get("logger"), self.run_dir)
        if sub == "predict":
            self._prediction_file = default_prediction_file(cfg.trainer, self.run_dir)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        if self.subcommand is not None:
            add_plain_progress_bar(self.config_init[self.subcommand]["trainer"])
        trainer = super().instantiate_trainer(**kwargs)
        if self.subcommand is not None:  # without one (run=False) there is no run directory
            checkpoints_into_run_dir(trainer, self.run_dir)
        add_exact_resume(trainer)
        self.stage_times = add_stage_times(trainer)
        if self.resumed_from is not None:
            save_config_beside_earlier(trainer, self.run_dir)
        use_atomic_checkpoint_io(trainer)
        allocator = cpu_allocator(trainer)
        if allocator is not None:
            self._allocator_tuned = True
            rank_zero_info(allocator)
        if self._prediction_file is not None:
            trainer.callbacks.append(JsonlPredictionWriter(str(self._prediction_file)))  # type: ignore[attr-defined]
        return trainer

    # ---------------------------------------------------------------- around each subcommand
    def before_fit(self) -> None:
        self.stage_times.mark_start(since=self._began)

    def before_validate(self) -> None:
        self.stage_times.mark_start(since=self._began)

    def before_test(self) -> None:
        self.stage_times.mark_start(since=self._began)

    def before_predict(self) -> None:
        self.stage_times.mark_start(since=self._began)

    def after_fit(self) -> None:
        if self.config.fit.get("test_after_fit"):
            self._test_best()
        self._after_run()

    def after_validate(self) -> None:
        self._after_run()

    def after_test(self) -> None:
        self._after_run()

    def after_predict(self) -> None:
        self._after_run()

    def _test_best(self) -> None:
        """``--test_after_fit``: test the best weights of the run just fitted."""
        checkpoint = self.trainer.checkpoint_callback
        best = getattr(checkpoint, "best_model_path", "") if checkpoint is not None else ""
        # Our modules already hold the best weights after fit; other modules get them from the checkpoint.
        ckpt = None if getattr(self.model, "export_path", None) or not best else "best"
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)

    def _after_run(self) -> None:
        """Print where the run's outputs are (rank 0), then finish the loggers (every rank)."""
        print_summary(self.run_dir, self.trainer, self.model)
        finish_loggers(self.trainer.loggers)
        if self._allocator_tuned:  # hand back what the run freed (`lit-llm tune` runs its trials in one process)
            release_freed_memory()
