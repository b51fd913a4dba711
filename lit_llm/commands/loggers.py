"""The loggers of a ``lit-llm`` run: W&B offline unless the user chose otherwise, records in the run directory, the
whole CLI config sent to every logger (the W&B run config), where each logger wrote, and a clean finish.

Example::
    configure_wandb_mode()  # before any WandbLogger starts
    logger_locations(trainer.loggers)  # ['TensorBoard:      runs/rt/version_0/tensorboard (tensorboard ...)']
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback

__all__ = ["LoggedSaveConfig", "configure_wandb_mode", "finish_loggers", "logger_locations", "loggers_into_run_dir"]


def configure_wandb_mode(environ: dict[str, str] | None = None) -> str:
    """Run W&B offline unless the user set ``WANDB_MODE`` or has an API key; returns the mode in force.

    Example::
        configure_wandb_mode({})  # 'offline' when ~/.netrc holds no W&B key; the dict then has WANDB_MODE=offline
    """
    env = os.environ if environ is None else environ
    if "WANDB_MODE" in env:
        return env["WANDB_MODE"]
    netrc = Path(env.get("NETRC", Path.home() / ".netrc"))
    has_key = bool(env.get("WANDB_API_KEY")) or (netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"))
    if not has_key:
        env["WANDB_MODE"] = "offline"
        return "offline"
    return "online"


def loggers_into_run_dir(logger_cfg: Any, run_dir: Path) -> None:
    """Point the configured loggers (``trainer.logger``: one or a list) whose ``save_dir`` is unset or ``.`` at
    ``run_dir``, so their records land in the run directory; the config is changed in place."""
    for logger in logger_cfg if isinstance(logger_cfg, list) else [logger_cfg]:
        init_args = getattr(logger, "init_args", None)
        if init_args is not None and "save_dir" in init_args and init_args.save_dir in (None, ".", "./"):
            init_args.save_dir = str(run_dir)


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


def finish_loggers(loggers: list[Any]) -> None:
    """Finish every logger's started run (W&B) so its records are complete when the command returns."""
    # Without an explicit finish, wandb's service can be torn down at interpreter exit before it has
    # written the offline run file (seen with wandb 0.31: an empty run-<id>.wandb).
    for logger in loggers:
        run = getattr(logger, "_experiment", None)
        if run is not None and hasattr(run, "finish"):
            run.finish()


class LoggedSaveConfig(SaveConfigCallback):
    """Saves ``config.yaml`` into the run directory and sends the full CLI config to every logger (W&B run config)."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # skip_none=False, as Lightning's SaveConfigCallback dumps config.yaml: W&B gets that config, None values too
        config = self.parser.dump(self.config, skip_none=False, format="yaml")
        import yaml

        as_dict = yaml.safe_load(config)
        for logger in trainer.loggers:
            logger.log_hyperparams({"cli": as_dict})
