"""Run directories of ``lit-llm``: every run gets a fresh ``<root>/<name>/version_<n>``, and ``fit --ckpt_path``
continues a run in its own directory, writing beside (never over) what the earlier part of the run wrote.

What lands in a run directory: ``config.yaml`` (``config.resume<k>.yaml`` for the k-th resume), ``checkpoints/``,
the loggers' records, ``export/`` and ``reports/`` of our modules (``export.resume<k>`` ... when a finished run is
resumed), ``predictions.jsonl``.

Example::
    run_dir, resumed_from = prepare_run_dir(cli.config["fit"], fit=True)  # runs/<config>/version_<n>
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback

__all__ = [
    "checkpoints_into_run_dir",
    "config_name",
    "keep_earlier_outputs",
    "next_resume_index",
    "next_run_dir",
    "prepare_run_dir",
    "resume_target",
    "save_config_beside_earlier",
]


def _run_versions(base: Path) -> list[tuple[int, Path]]:
    """``(n, directory)`` for every ``base/version_<n>``."""
    return [(int(m.group(1)), p) for p in base.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))]


def next_run_dir(root: str | Path, name: str) -> Path:
    """``root/name/version_<n>`` with n one past the highest existing version, so no run reuses a directory.

    Example::
        next_run_dir("runs", "rt")  # runs/rt/version_0, then version_1 once that one exists
    """
    base = Path(root) / name
    return base / f"version_{max((n for n, _ in _run_versions(base)), default=-1) + 1}"


def next_resume_index(run_dir: Path) -> int:
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

    Example::
        resume_target("last", "runs", "rt")  # (runs/rt/version_2/checkpoints/last.ckpt, runs/rt/version_2)
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


def config_name(cfg: Any) -> str:
    """The run's folder name: ``--run_name``, else the stem of the last ``--config`` file, else ``run``."""
    if cfg.get("run_name"):
        return str(cfg.run_name)
    paths = cfg.get("config") or []
    if paths:
        return Path(str(paths[-1])).stem
    return "run"


def keep_earlier_outputs(cfg: Any, run_dir: Path, n: int) -> None:
    """A resumed run that already exported or reported (it had finished) writes beside, never over, them.

    A model whose ``export_dir`` / ``report_dir`` is left to its default, while ``run_dir/export`` (``reports``)
    already holds files, gets ``run_dir/export.resume<n>`` (``reports.resume<n>``) instead; ``cfg`` is changed.
    """
    init_args = getattr(cfg.get("model"), "init_args", None)
    for key, default in (("export_dir", "export"), ("report_dir", "reports")):
        if init_args is None or key not in init_args or init_args[key]:
            continue
        if (run_dir / default).is_dir() and any((run_dir / default).iterdir()):
            init_args[key] = str(run_dir / f"{default}.resume{n}")


def prepare_run_dir(cfg: Any, *, fit: bool) -> tuple[Path, Path | None]:
    """The run directory of a subcommand's config ``cfg``, created if new: ``(run directory, resumed checkpoint)``.

    The root is ``trainer.default_root_dir``, else ``run_root``. For ``fit`` with a ``ckpt_path``, the path is
    resolved by :func:`resume_target` and written back into ``cfg.ckpt_path`` (None when ``last`` finds nothing);
    a run continued in its own directory keeps that directory's earlier outputs (:func:`keep_earlier_outputs`).
    Every other run gets :func:`next_run_dir`.
    """
    root = cfg.trainer.get("default_root_dir") or cfg.get("run_root") or "runs"
    name = config_name(cfg)
    resumed_from: Path | None = None
    run_dir: Path | None = None
    if fit and cfg.get("ckpt_path"):
        resumed_from, run_dir = resume_target(str(cfg.ckpt_path), Path(root).absolute(), name)
        if resumed_from is None:
            print(f"lit-llm: no last.ckpt under {Path(root) / name}/version_*/checkpoints; starting a new run")
        cfg.ckpt_path = None if resumed_from is None else str(resumed_from)
    if run_dir is None:
        run_dir = next_run_dir(Path(root).absolute(), name)
        run_dir.mkdir(parents=True, exist_ok=False)
    else:
        print(f"lit-llm: resuming {resumed_from}; the run continues in {run_dir}")
        keep_earlier_outputs(cfg, run_dir, next_resume_index(run_dir))
    return run_dir, resumed_from


def checkpoints_into_run_dir(trainer: Trainer, run_dir: Path) -> None:
    """Every ModelCheckpoint without a ``dirpath`` writes to ``run_dir/checkpoints``."""
    for cb in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
            cb.dirpath = str(run_dir / "checkpoints")


def save_config_beside_earlier(trainer: Trainer, run_dir: Path) -> None:
    """A resumed run keeps the original ``config.yaml`` and saves its own beside it (``config.resume<k>.yaml``)."""
    for cb in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(cb, SaveConfigCallback) and (run_dir / cb.config_filename).exists():
            cb.config_filename = f"config.resume{next_resume_index(run_dir)}.yaml"
