"""The ``lit-llm`` command: LightningCLI (fit / validate / test / predict) plus lit-llm's own subcommands.

Any LightningModule, LightningDataModule and Callback can be named by ``class_path`` (subclass mode), so the
same command runs our modules and a user's. Each run gets a fresh directory ``runs/<config>/version_<n>``
(never an earlier run's), W&B runs offline unless the user has a key and chose online mode, the whole CLI config
becomes the W&B run config, and the end of a run prints where its outputs are.

A user error (a bad data file, checkpoint or input path: see :func:`is_user_error`) prints ``lit-llm: <message>``
on stderr and exits with code 2; ``LIT_LLM_TRACEBACK=1`` shows its traceback too. Any other exception keeps its
traceback. When stdout is not a terminal (``lit-llm fit ... > train.log``) and the config names no progress bar,
progress is printed as plain lines by :class:`~lit_llm.callbacks.PlainProgressBar`.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from lit_llm.callbacks.progress import PlainProgressBar
from lit_llm.callbacks.resume import ExactResume
from lit_llm.training.checkpointing import (
    AtomicCheckpointIO,
    CheckpointError,
    load_checkpoint_file,
    require_lightning_checkpoint,
)
from lit_llm.errors import UserInputError

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
        f"  {TRACEBACK_ENV + '=1':<21}print the full traceback of a user error (bad file, checkpoint, argument)",
        f"  {'WANDB_MODE':<21}W&B mode; default offline unless you have a W&B API key",
    ])


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is the user's mistake, reported by its message alone, rather than a possible bug.

    The set is explicit, because ``ValueError`` or ``OSError`` in general can just as well be bugs:
    any :class:`~lit_llm.errors.UserInputError` (``DataFileError``, ``CheckpointError``, ...), and a
    ``FileNotFoundError`` built with a message only (``errno`` None): every input check, ours and the libraries',
    raises it that way naming the path, while one from a failed ``open()`` carries an errno and may be our bug.
    A plain ``ValueError`` keeps its traceback; argument checks that want the short form raise
    :class:`~lit_llm.errors.InvalidArgumentError`.
    """
    if isinstance(err, UserInputError):
        return True
    return isinstance(err, FileNotFoundError) and err.errno is None


def user_error(err: BaseException) -> BaseException | None:
    """The user error that ``err`` is, or was raised from (``raise ... from``), or None.

    jsonargparse wraps an ``__init__`` error of a ``trainer.callbacks`` entry in its own ``ValueError`` ("Does not
    validate against any of the Union subtypes") raised from it; the user needs the inner message, not the wrapper.
    Only explicit causes are followed, never the context of an error raised while handling another.
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if is_user_error(current):
            return current
        seen.add(id(current))
        current = current.__cause__
    return None


def validate_ckpt_path(ckpt_path: str | None) -> None:
    """Check a ``--ckpt_path`` file with lit-llm's safe loader before LightningCLI or the Trainer read it.

    LightningCLI reads a checkpoint's hyperparameters as soon as the arguments are parsed: with torch's message
    (which advises ``weights_only=False``, i.e. running the file's code) for a file that is not a plain checkpoint.
    Loading it first with :func:`~lit_llm.training.checkpointing.load_checkpoint_file` (``weights_only=True``) turns a
    corrupt, foreign or code-carrying file into a :class:`~lit_llm.training.checkpointing.CheckpointError` naming it.
    Keywords (``last``, ``best``) and directories (sharded checkpoints) are left to the Trainer.

    LightningCLI then parses the hyperparameters into the config, importing the module of every ``class_path``
    they name: a module import runs that module's code. So each class path in the hyperparameters must come from a
    module this run has already imported (the config's own classes are imported when it is parsed).

    Raises:
        CheckpointError: the file is not a readable Lightning checkpoint, or its hyperparameters name a class of a
            module the run has not imported.
    """
    if not ckpt_path or not Path(ckpt_path).is_file():
        return
    checkpoint = require_lightning_checkpoint(load_checkpoint_file(ckpt_path), ckpt_path)
    for class_path in _class_paths(checkpoint.get("hyper_parameters")):
        module = class_path.rpartition(".")[0]
        if module not in sys.modules:
            raise CheckpointError(
                f"{ckpt_path}: its hyper_parameters name the class {class_path!r} of module {module!r}, which this run "
                "has not imported; lit-llm does not import code because a checkpoint names it. If you trust it, name "
                "the class in your config (e.g. --model.class_path), or resume a checkpoint written by this model."
            )


def _class_paths(value: Any) -> list[str]:
    """Every string under a ``class_path`` / ``_class_path`` key of nested dicts and lists."""
    if isinstance(value, dict):
        found = [v for k, v in value.items() if k in ("class_path", "_class_path") and isinstance(v, str)]
        return found + [p for v in value.values() for p in _class_paths(v)]
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _class_paths(v)]
    return []


def configure_wandb_mode(environ: dict[str, str] | None = None) -> str:
    """Run W&B offline unless the user set ``WANDB_MODE`` or has an API key; returns the mode in force."""
    env = os.environ if environ is None else environ
    if "WANDB_MODE" in env:
        return env["WANDB_MODE"]
    netrc = Path(env.get("NETRC", Path.home() / ".netrc"))
    has_key = bool(env.get("WANDB_API_KEY")) or (netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"))
    if not has_key:
        env["WANDB_MODE"] = "offline"
        return "offline"
    return "online"


def _run_versions(base: Path) -> list[tuple[int, Path]]:
    """``(n, directory)`` for every ``base/version_<n>``."""
    return [(int(m.group(1)), p) for p in base.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))]


def next_run_dir(root: str | Path, name: str) -> Path:
    """``root/name/version_<n>`` with n one past the highest existing version, so no run reuses a directory."""
    base = Path(root) / name
    return base / f"version_{max((n for n, _ in _run_versions(base)), default=-1) + 1}"


def _next_resume_index(run_dir: Path) -> int:
    """k of the next ``config.resume<k>.yaml``, the suffix a resumed run gives what it writes beside earlier files."""
    k = 1
    while (run_dir / f"config.resume{k}.yaml").exists():
        k += 1
    return k


def resume_target(ckpt_path: str, root: str | Path, name: str) -> tuple[Path | None, Path | None]:
    """Where ``fit --ckpt_path`` resumes: ``(checkpoint file, run directory to continue in)``.

    ``last`` is the newest ``root/name/version_<n>/checkpoints/last.ckpt`` (``(None, None)`` when there is none:
    the run starts afresh, as Lightning does). A checkpoint inside a run directory's ``checkpoints/`` continues
    that run in its directory; any other file starts a new run directory from it.

    Raises:
        FileNotFoundError: the checkpoint file does not exist.
    """
    if ckpt_path == "last":
        found = [(n, p) for n, p in _run_versions(Path(root) / name) if (p / "checkpoints" / "last.ckpt").is_file()]
        if not found:
            return None, None
        run_dir = max(found)[1]
        return run_dir / "checkpoints" / "last.ckpt", run_dir
    path = Path(ckpt_path).absolute()
    if not path.exists():
        raise FileNotFoundError(
            f"--ckpt_path {ckpt_path}: no such checkpoint. Give a .ckpt file (or a sharded checkpoint directory), or "
            f"'last' for the newest runs/{name}/version_<n>/checkpoints/last.ckpt."
        )
    run_dir = path.parent.parent
    if path.parent.name == "checkpoints" and (run_dir / "config.yaml").is_file():
        return path, run_dir
    return path, None


def logger_locations(loggers: list[Any]) -> list[str]:
    """One summary line per logger saying where its records are (and how to open them), in the loggers' order.

    W&B: the run directory and mode (once the run has started); TensorBoard: the event directory and the
    ``tensorboard --logdir`` command; CSV: its ``metrics.csv``; any other logger: its class name and its
    ``log_dir`` or ``save_dir``.

    Example::
        logger_locations(trainer.loggers)  # ['TensorBoard:      runs/rt/version_0/tensorboard (tensorboard ...)']
    """
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    lines = []
    for logger in loggers:
        name = type(logger).__name__
        if name == "WandbLogger":
            run = getattr(logger, "_experiment", None)
            if run is not None and getattr(run, "dir", None):
                lines.append(
                    f"W&B run:          {Path(run.dir).parent} (mode {os.environ.get('WANDB_MODE', 'online')})"
                )
        elif isinstance(logger, TensorBoardLogger):
            log_dir = Path(logger.log_dir)  # a version of "" leaves a trailing slash
            lines.append(f"TensorBoard:      {log_dir} (tensorboard --logdir {log_dir})")
        elif isinstance(logger, CSVLogger):
            lines.append(f"CSV metrics:      {Path(logger.log_dir) / 'metrics.csv'}")
        else:
            where = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
            lines.append(f"{name}: {where}" if where else f"{name}: (no local directory)")
    return lines


class LoggedSaveConfig(SaveConfigCallback):
    """Saves ``config.yaml`` into the run directory and sends the full CLI config to every logger (W&B run config)."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # skip_none=False, as Lightning's SaveConfigCallback dumps config.yaml: W&B gets that config, None values too
        config = self.parser.dump(self.config, skip_none=False, format="yaml")
        import yaml

        as_dict = yaml.safe_load(config)
        for logger in trainer.loggers:
            logger.log_hyperparams({"cli": as_dict})


class JsonlPredictionWriter(BasePredictionWriter):
    """Writes whatever ``predict_step`` returns (lists of dicts) to a JSONL file, one prediction a line."""

    def __init__(self, output_file: str) -> None:
        super().__init__(write_interval="epoch")
        self.output_file = output_file

    def write_on_epoch_end(
        self, trainer: Trainer, pl_module: LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        import json

        path = Path(self.output_file)
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("x") as f:  # "x": never overwrite an earlier file
            for batch in predictions:
                for item in batch if isinstance(batch, list) else [batch]:
                    f.write(json.dumps(item, default=str) + "\n")
        self.written = path


class LitLLMCLI(LightningCLI):
    """LightningCLI with run directories, W&B config logging, ``--test_after_fit`` and a closing summary."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
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

    # ---------------------------------------------------------------- run directory
    def _config_name(self, cfg: Any) -> str:
        if cfg.get("run_name"):
            return str(cfg.run_name)
        paths = cfg.get("config") or []
        if paths:
            return Path(str(paths[-1])).stem
        return "run"

    def before_instantiate_classes(self) -> None:
        sub = self.subcommand
        if sub is None:
            return
        cfg = self.config[sub]
        trainer_cfg = cfg.trainer
        root = trainer_cfg.get("default_root_dir") or cfg.get("run_root") or "runs"
        name = self._config_name(cfg)
        self.resumed_from: Path | None = None
        run_dir = None
        if sub == "fit" and cfg.get("ckpt_path"):
            ckpt, run_dir = resume_target(str(cfg.ckpt_path), Path(root).absolute(), name)
            if ckpt is None:
                print(f"lit-llm: no last.ckpt under {Path(root) / name}/version_*/checkpoints; starting a new run")
            cfg.ckpt_path = None if ckpt is None else str(ckpt)
            self.resumed_from = ckpt
        if run_dir is None:
            run_dir = next_run_dir(Path(root).absolute(), name)
            run_dir.mkdir(parents=True, exist_ok=False)
        else:
            print(f"lit-llm: resuming {self.resumed_from}; the run continues in {run_dir}")
            self._keep_earlier_outputs(cfg, run_dir, _next_resume_index(run_dir))
        trainer_cfg.default_root_dir = str(run_dir)
        self.run_dir = run_dir
        loggers = trainer_cfg.get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            init_args = getattr(logger, "init_args", None)
            if init_args is not None and "save_dir" in init_args and init_args.save_dir in (None, ".", "./"):
                init_args.save_dir = str(run_dir)
        if sub == "predict":
            callbacks = trainer_cfg.get("callbacks") or []
            if not any("PredictionWriter" in str(getattr(c, "class_path", "")) for c in callbacks):
                self._prediction_file = run_dir / "predictions.jsonl"

    @staticmethod
    def _keep_earlier_outputs(cfg: Any, run_dir: Path, n: int) -> None:
        """A resumed run that already exported or reported (it had finished) writes beside, never over, them."""
        init_args = getattr(cfg.get("model"), "init_args", None)
        for key, default in (("export_dir", "export"), ("report_dir", "reports")):
            if init_args is None or key not in init_args or init_args[key]:
                continue
            if (run_dir / default).is_dir() and any((run_dir / default).iterdir()):
                init_args[key] = str(run_dir / f"{default}.resume{n}")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        self._plain_progress_when_not_a_terminal()
        trainer = super().instantiate_trainer(**kwargs)
        for cb in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
                cb.dirpath = str(self.run_dir / "checkpoints")
        if not any(isinstance(cb, ExactResume) for cb in trainer.callbacks):  # type: ignore[attr-defined]
            trainer.callbacks.append(ExactResume())  # type: ignore[attr-defined]
        if getattr(self, "resumed_from", None) is not None:
            # The resumed run keeps the original config.yaml and saves its own beside it.
            for cb in trainer.callbacks:  # type: ignore[attr-defined]
                if isinstance(cb, SaveConfigCallback) and (self.run_dir / cb.config_filename).exists():
                    cb.config_filename = f"config.resume{_next_resume_index(self.run_dir)}.yaml"
        strategy = trainer.strategy
        if type(getattr(strategy, "_checkpoint_io", None) or strategy.checkpoint_io) is TorchCheckpointIO:
            strategy.checkpoint_io = AtomicCheckpointIO()  # a kill during a save never truncates a checkpoint
        prediction_file = getattr(self, "_prediction_file", None)
        if prediction_file is not None:
            trainer.callbacks.append(JsonlPredictionWriter(str(prediction_file)))  # type: ignore[attr-defined]
        return trainer

    def _plain_progress_when_not_a_terminal(self) -> None:
        """Add a PlainProgressBar when stdout is piped or redirected, unless the config chose a bar or none."""
        if self.subcommand is None or sys.stdout.isatty():
            return
        trainer_cfg = self.config_init[self.subcommand]["trainer"]
        if trainer_cfg.get("enable_progress_bar") is False:
            return
        callbacks = trainer_cfg.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        if not any(isinstance(cb, ProgressBar) for cb in callbacks):
            trainer_cfg["callbacks"] = [*callbacks, PlainProgressBar()]

    # ---------------------------------------------------------------- after each subcommand
    def after_fit(self) -> None:
        if self.config.fit.get("test_after_fit"):
            checkpoint = self.trainer.checkpoint_callback
            best = getattr(checkpoint, "best_model_path", "") if checkpoint is not None else ""
            # Our modules already hold the best weights after fit; other modules get them from the checkpoint.
            ckpt = None if getattr(self.model, "export_path", None) or not best else "best"
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)
        self._summary()
        self._finish_loggers()

    def after_validate(self) -> None:
        self._summary()
        self._finish_loggers()

    def after_test(self) -> None:
        self._summary()
        self._finish_loggers()

    def after_predict(self) -> None:
        self._summary()
        self._finish_loggers()

    @rank_zero_only
    def _summary(self) -> None:
        lines = [f"run directory:    {self.run_dir}"]
        checkpoint = self.trainer.checkpoint_callback
        best = getattr(checkpoint, "best_model_path", "") if checkpoint is not None else ""
        if best:
            score = getattr(checkpoint, "best_model_score", None)
            lines.append(
                f"best checkpoint:  {best}"
                + (f" ({getattr(checkpoint, 'monitor', None)}={float(score):.4f})" if score is not None else "")
            )
        last = getattr(checkpoint, "last_model_path", "") if checkpoint is not None else ""
        if last:
            lines.append(f"last checkpoint:  {last}")
        for attr, label in (("export_path", "exported model:   "), ("report_path", "report:           ")):
            value = getattr(self.model, attr, None)
            if value:
                lines.append(f"{label}{value}")
        for cb in self.trainer.callbacks:  # type: ignore[attr-defined]
            written = getattr(cb, "written", None)
            if written:
                lines.append(f"predictions:      {written}")
            report = getattr(cb, "report_path", None)
            if report:
                lines.append(f"{type(cb).__name__} report: {report}")
            artifact = getattr(cb, "artifact_path", None)  # what a compression callback wrote for serving
            if artifact:
                lines.append(f"{type(cb).__name__} artifact: {artifact}")
        lines.extend(logger_locations(self.trainer.loggers))
        print("\n" + "\n".join(lines), flush=True)

    def _finish_loggers(self) -> None:
        # Without an explicit finish, wandb's service can be torn down at interpreter exit before it has
        # written the offline run file (seen with wandb 0.31: an empty run-<id>.wandb).
        for logger in self.trainer.loggers:
            run = getattr(logger, "_experiment", None)
            if run is not None and hasattr(run, "finish"):
                run.finish()


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
