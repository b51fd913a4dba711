"""The ``lit-llm`` command: LightningCLI (fit / validate / test / predict) plus lit-llm's own subcommands.

Any LightningModule, LightningDataModule and Callback can be named by ``class_path`` (subclass mode), so the
same command runs our modules and a user's. Each run gets a fresh directory ``runs/<config>/version_<n>``
(never an earlier run's), W&B runs offline unless the user has a key and chose online mode, the whole CLI config
becomes the W&B run config, and the end of a run prints where its outputs are.

A user error (a bad data file, checkpoint or input path: see :func:`is_user_error`) prints ``lit-llm: <message>``
on stderr and exits with code 2; ``LIT_LLM_TRACEBACK=1`` shows its traceback too. Any other exception keeps its
traceback. When stdout is not a terminal (``lit-llm fit ... > train.log``) and the config names no progress bar,
progress is printed as plain lines by :class:`~lit_llm.callbacks.PlainProgressBar`.

This module is the entry point only: the subcommand table, ``--help``, the user-error exit and
:class:`LitLLMCLI` (in :mod:`lit_llm.commands.lightning_cli`), which says when each step runs. The steps live in
:mod:`lit_llm.commands`: ``run_dirs``
(run directories, resume), ``loggers`` (W&B mode, config to the loggers, where they wrote), ``predictions``
(``predictions.jsonl``), ``trainer_defaults`` (plain progress, exact resume, atomic checkpoint files), ``summary``
(the closing lines) and ``user_errors`` (which errors print one line; the ``--ckpt_path`` check). Names that code
imported from here before that split (``next_run_dir``, ``logger_locations``, ...) are still importable from here.
"""

from __future__ import annotations

import os
import sys

from lit_llm.commands.lightning_cli import LitLLMCLI
from lit_llm.commands.loggers import configure_wandb_mode, logger_locations
from lit_llm.commands.run_dirs import next_resume_index as _next_resume_index  # noqa: F401 (tests import it here)
from lit_llm.commands.run_dirs import next_run_dir, resume_target
from lit_llm.commands.user_errors import is_user_error, user_error, validate_ckpt_path

__all__ = [
    "LitLLMCLI",
    "configure_wandb_mode",
    "help_text",
    "is_user_error",
    "logger_locations",
    "user_error",
    "main",
    "next_run_dir",
    "resume_target",
    "validate_ckpt_path",
]

# One line each for `lit-llm --help` (Lightning's own are the Trainer methods' first sentences, some cut mid-way).
LIGHTNING_SUBCOMMANDS = {
    "fit": "train a model (and test it with --test_after_fit true); --ckpt_path resumes a run",
    "validate": "one evaluation pass over the validation set",
    "test": "one evaluation pass over the test set",
    "predict": "run the model on predict_file and write predictions.jsonl in the run directory",
}
# Subcommands that are not Trainer methods: (module with `main(argv) -> int`, one line for `lit-llm --help`).
EXTRA_SUBCOMMANDS = {
    "plan": ("lit_llm.planning.cli", "estimate memory and speed of each way to train a model on given hardware"),
    "export": ("lit_llm.commands.export", "export a checkpoint to a Hugging Face model directory (and ONNX)"),
    "tune": ("lit_llm.commands.tune", "search hyperparameters with Optuna, each trial an ordinary lit-llm fit run"),
}
TRACEBACK_ENV = "LIT_LLM_TRACEBACK"


def help_text() -> str:
    """What ``lit-llm --help`` prints: every subcommand with one line, and the environment variables."""
    names = [*LIGHTNING_SUBCOMMANDS, *EXTRA_SUBCOMMANDS]
    rows = [*LIGHTNING_SUBCOMMANDS.items(), *((name, line) for name, (_, line) in EXTRA_SUBCOMMANDS.items())]
    width = max(len(name) for name in names) + 2
    return "\n".join([
        f"usage: lit-llm [-h] {{{','.join(names)}}} ...",
        "",
        "Train, evaluate, plan and export transformer language models with PyTorch Lightning.",
        "",
        "subcommands (`lit-llm <subcommand> --help` lists its options):",
        *(f"  {name:<{width}}{line}" for name, line in rows),
        "",
        "fit, validate, test and predict are LightningCLI subcommands: --config FILE (YAML), --print_config,",
        "--trainer.*, --model.*, --data.*; e.g. `lit-llm fit --config configs/finetune/minilm_rotten_tomatoes.yaml`.",
        "",
        "environment:",
        f"  {TRACEBACK_ENV + '=1':<25}print the full traceback of a user error (bad file, checkpoint, argument)",
        f"  {'WANDB_MODE':<25}W&B mode; default offline unless you have a W&B API key",
        f"  {'LIT_LLM_MALLOC_TUNING=0':<25}on CPU, let glibc return large freed blocks to the system (slower steps)",
    ])


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lit-llm``: 0 on success, 2 on a user error (its message on stderr, no traceback).

    Example::
        main(["fit", "--config", "configs/finetune/minilm_rotten_tomatoes.yaml"])
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(help_text(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    try:
        return _run(args, from_sys_argv=argv is None)
    except Exception as err:
        cause = user_error(err)
        if cause is None or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        print(f"lit-llm: {cause}", file=sys.stderr)
        return 2


def _run(args: list[str], from_sys_argv: bool) -> int:
    if args[0] in EXTRA_SUBCOMMANDS:
        import importlib

        try:
            module = importlib.import_module(EXTRA_SUBCOMMANDS[args[0]][0])
        except ImportError as err:
            print(f"lit-llm {args[0]}: not available in this installation ({err})", file=sys.stderr)
            return 2
        return int(module.main(args[1:]) or 0)
    if not args[0].startswith("-") and args[0] not in LIGHTNING_SUBCOMMANDS:
        choices = ", ".join([*LIGHTNING_SUBCOMMANDS, *EXTRA_SUBCOMMANDS])
        print(f"lit-llm: unknown subcommand {args[0]!r}; choose one of {choices} (lit-llm --help)", file=sys.stderr)
        raise SystemExit(2)
    LitLLMCLI(args=None if from_sys_argv else args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
