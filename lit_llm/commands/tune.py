"""``lit-llm tune``: an Optuna hyperparameter search in which every trial is an ordinary ``lit-llm fit`` run.

::

    lit-llm tune --config configs/finetune/minilm_rotten_tomatoes.yaml \\
        --search configs/tune/minilm_rotten_tomatoes_search.yaml --trials 8

The search space is a YAML file keyed by the same dotted keys as the ``lit-llm fit`` command line::

    model.init_args.optimizer.init_args.lr: {low: 1.0e-5, high: 3.0e-4, log: true}   # float, log scale
    model.init_args.optimizer.init_args.weight_decay: {low: 0.0, high: 0.1}          # float
    trainer.accumulate_grad_batches: {low: 1, high: 4}                               # int: both bounds ints
    data.init_args.batch_size: {choices: [16, 32, 64]}                               # categorical

Each trial runs ``lit-llm fit --config X.yaml --<key>=<value> ...`` in this process with its own run directory
``runs/<study>/trial_<n>/version_0``; the study (TPE sampler, median pruning) lives in a database, SQLite at
``runs/<study>/study.db`` by default or any SQLAlchemy URL given with ``--storage``. The study name defaults to the
config's file name.

- Arguments after ``--`` go to every trial's ``lit-llm fit`` (a budget: ``-- --trainer.max_epochs=1``);
  ``best.yaml`` keeps the config's own values for them, so it trains the full schedule with the tuned values.
- ``--trials N`` counts the study's finished trials (complete or pruned, from every worker and every earlier
  invocation): a study that was stopped resumes where it stopped and runs only the missing trials.
- A trial whose worker was killed stays RUNNING in the database. Workers write a heartbeat every
  ``--heartbeat_s`` seconds; once a RUNNING trial's heartbeat is twice that old, the next worker to start a trial
  marks it failed and runs it again, once, with the same values (a kill says nothing about the values). Failed
  trials do not count toward ``--trials``.
- Several machines (or several processes) run trials of one study at once by giving the same ``--storage``
  and ``--study_name``; each stops when the study has N finished trials, so the study may end with up to one
  extra trial per additional worker.
- A trial stops early (pruned) when its validation curve, reported at every validation, falls below the median
  of earlier trials at the same validation (the n-th of each run: :class:`OptunaPruning`).
- With a ``WandbLogger`` in the config, each trial's W&B run is named ``<study>-trial-<n>`` in the group
  ``<study>``.
- At the end it prints the best trial, writes ``runs/<study>/best.yaml`` (the config with the best values set,
  ``lit-llm fit --config runs/<study>/best.yaml`` trains it) and saves the optimization history and the parameter
  importances (two or more complete trials) as PNG plots through ``optuna.visualization.matplotlib``.

The objective is the best value of ``--monitor`` over a trial's validations (what its ``ModelCheckpoint`` keeps);
by default the metric and mode of the config's ``ModelCheckpoint``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import difflib
import io
import json
import sys
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import optuna
import yaml
from lightning.pytorch.callbacks import Callback
from optuna.trial import TrialState
from typing_extensions import override

from lit_llm.errors import InvalidArgumentError

__all__ = [
    "OptunaPruning",
    "SearchParam",
    "apply_values",
    "cli_overrides",
    "config_keys",
    "full_config",
    "load_search_space",
    "main",
    "open_study",
    "save_plots",
    "suggest",
    "write_best_config",
]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what --trials counts
_SPEC_KEYS = {"low", "high", "log", "step", "choices"}
_Scalar = (str, int, float, bool, type(None))


# ---------------------------------------------------------------------------------------------- search space
@dataclass(frozen=True)
class SearchParam:
    """One dimension of the search: a dotted config key and its range (``low``/``high``) or ``choices``."""

    key: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    is_int: bool = False
    choices: tuple[Any, ...] | None = None


def _walk(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping):
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            yield key, v
            yield from _walk(v, key)


def config_keys(full: Mapping[str, Any]) -> dict[str, Any]:
    """Every dotted key of a nested config (inner levels too) and its value; a list (``trainer.callbacks``) is one
    value, as on the LightningCLI command line.

    Example::
        config_keys({"model": {"init_args": {"lr": 0.1}}})
        # {'model': {...}, 'model.init_args': {'lr': 0.1}, 'model.init_args.lr': 0.1}
    """
    return dict(_walk(full))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_search_space(path: str | Path, config_keys: Mapping[str, Any]) -> list[SearchParam]:
    """Read and check a search-space YAML file against the keys of the full ``lit-llm fit`` config.

    Args:
        path: the YAML file: ``dotted.key: {low, high[, log][, step]}`` or ``dotted.key: {choices: [...]}``.
        config_keys: every dotted key of the full config (``lit-llm fit --print_config``) and its value there.

    Raises:
        FileNotFoundError: no such file.
        InvalidArgumentError: not a mapping of keys to ranges; a key that is not a config key (the closest is
            named); an empty range (``low >= high``); ``log`` with ``low <= 0``; an integer range for a float
            setting or the reverse; empty or non-scalar ``choices``.

    Example::
        full = full_config("configs/finetune/minilm_rotten_tomatoes.yaml")
        space = load_search_space("configs/tune/minilm_rotten_tomatoes_search.yaml", config_keys(full))
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--search {path}: no such file (a YAML file of dotted.key: {{low, high}} entries)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InvalidArgumentError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, Mapping) or not raw:
        raise InvalidArgumentError(
            f"{path}: expected a mapping of dotted config keys to ranges, e.g. "
            "'model.init_args.optimizer.init_args.lr: {low: 1.0e-5, high: 3.0e-4, log: true}'"
        )
    space = []
    for key, spec in raw.items():
        where = f"{path}: {key}"
        key = str(key)
        if key not in config_keys:
            close = difflib.get_close_matches(key, list(config_keys), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise InvalidArgumentError(
                f"{where}: not a key of the config{hint} (`lit-llm fit --config CONFIG --print_config` lists them)"
            )
        if not isinstance(spec, Mapping) or not set(spec) or not set(spec) <= _SPEC_KEYS:
            raise InvalidArgumentError(
                f"{where}: give {{low: ..., high: ...}} (optionally log: true or step: ...) or {{choices: [...]}}, "
                f"not {spec!r}"
            )
        if "choices" in spec:
            choices = spec["choices"]
            if set(spec) != {"choices"}:
                extra = sorted(set(spec) - {"choices"})
                raise InvalidArgumentError(f"{where}: choices cannot be combined with {extra}")
            if not isinstance(choices, list) or not choices or not all(isinstance(c, _Scalar) for c in choices):
                raise InvalidArgumentError(
                    f"{where}: choices must be a non-empty list of numbers, strings, booleans or null, not {choices!r}"
                )
            space.append(SearchParam(key, choices=tuple(choices)))
            continue
        low: Any = spec.get("low")
        high: Any = spec.get("high")
        if not (_number(low) and _number(high)):
            raise InvalidArgumentError(f"{where}: low and high must both be numbers (got low={low!r}, high={high!r})")
        if low >= high:
            raise InvalidArgumentError(f"{where}: empty range low={low!r} >= high={high!r}; low must be below high")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise InvalidArgumentError(f"{where}: log must be true or false, not {log!r}")
        if log and low <= 0:
            raise InvalidArgumentError(f"{where}: log: true needs low > 0 (got low={low!r})")
        step: Any = spec.get("step")
        if step is not None and (not _number(step) or step <= 0 or log):
            raise InvalidArgumentError(f"{where}: step must be a positive number and cannot be used with log: true")
        is_int = isinstance(low, int) and isinstance(high, int) and (step is None or isinstance(step, int))
        current: Any = config_keys[key]
        if is_int and isinstance(current, float):
            raise InvalidArgumentError(
                f"{where}: the config's value {current!r} is a float but the range is written as integers; "
                f"write low: {float(low)!r}, high: {float(high)!r}"
            )
        if not is_int and isinstance(current, int) and not isinstance(current, bool):
            raise InvalidArgumentError(
                f"{where}: the config's value {current!r} is an integer; write low and high (and step) as integers"
            )
        space.append(SearchParam(key, low=low, high=high, log=log, step=step, is_int=is_int))
    return space


def suggest(trial: optuna.trial.BaseTrial, space: list[SearchParam]) -> dict[str, Any]:
    """The trial's value for every dimension (TPE's choice, or the fixed values of a retried trial)."""
    values: dict[str, Any] = {}
    for p in space:
        if p.choices is not None:
            values[p.key] = trial.suggest_categorical(p.key, list(p.choices))
        elif p.is_int:
            step = int(p.step or 1)
            values[p.key] = trial.suggest_int(p.key, int(p.low or 0), int(p.high or 0), step=step, log=p.log)
        else:
            values[p.key] = trial.suggest_float(p.key, float(p.low or 0), float(p.high or 0), step=p.step, log=p.log)
    return values


def _yaml_scalar(value: Any) -> str:
    # yaml, not repr: 1e-05 is a string to YAML 1.1, 1.0e-05 a float
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def cli_overrides(values: Mapping[str, Any]) -> list[str]:
    """``--dotted.key=value`` arguments of ``lit-llm fit`` (LightningCLI) for the given values.

    Example::
        cli_overrides({"model.init_args.optimizer.init_args.lr": 1e-4})
        # ['--model.init_args.optimizer.init_args.lr=0.0001']
    """
    return [f"--{key}={_yaml_scalar(value)}" for key, value in values.items()]


def apply_values(config: dict[str, Any], full: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the user's ``config`` with each dotted key set to its value.

    Where the user's file does not spell a level out as a mapping (a key it leaves to its default, or a class
    given by name only), that level is taken from ``full``, the parsed config (``--print_config``), so the result
    is what LightningCLI reads the key as.
    """
    out = copy.deepcopy(config)
    for key, value in values.items():
        node: dict[str, Any] = out
        full_node: Any = full
        *parents, leaf = key.split(".")
        for part in parents:
            full_node = full_node.get(part) if isinstance(full_node, Mapping) else None
            if not isinstance(node.get(part), dict):
                node[part] = copy.deepcopy(dict(full_node)) if isinstance(full_node, Mapping) else {}
            node = node[part]
        node[leaf] = value
    return out


# ---------------------------------------------------------------------------------------------- pruning callback
class OptunaPruning(Callback):
    """Reports ``monitor`` to an Optuna trial at every validation and stops the run when the trial should be pruned.

    The value is reported at the validation's number in the run (1, 2, ...; the sanity check and a second
    validation at the same optimizer step do not count), and the pruner compares trials at equal numbers. With
    validation per epoch or at a fraction of one (``val_check_interval: 0.5``) that is the same point of training
    in every trial whatever its batch size; at ``trainer.global_step`` (what we did first) a batch-16 trial's
    half epoch was compared with a batch-32 trial's whole one. With ``val_check_interval`` in steps, a search over
    the batch size compares different amounts of data.

    The callback ends a pruned run through ``trainer.should_stop`` rather than by raising ``optuna.TrialPruned``
    inside the training loop, as optuna-integration's ``PyTorchLightningPruningCallback`` does: the run then
    finishes as any stopped run (checkpoints, loggers closed, the CLI's summary), and the objective raises
    ``TrialPruned`` once ``fit`` returns (see :meth:`objective_value`). That, and not adding a package for forty
    lines, is why it is written here.

    Works on any LightningModule that logs ``monitor`` during validation; one process per trial.

    Args:
        trial: the Optuna trial of this run.
        monitor: the logged metric, e.g. ``val/accuracy``.
        mode: ``max`` or ``min``: which values are better.

    Raises:
        InvalidArgumentError: ``mode`` is not max/min; at fit start, more than one process; at a validation end,
            ``monitor`` was not logged (the logged metrics are listed).

    Example::
        def objective(trial):
            pruning = OptunaPruning(trial, monitor="val/acc", mode="max")
            pl.Trainer(max_epochs=5, callbacks=[pruning]).fit(MyModule(lr=trial.suggest_float("lr", 1e-5, 1e-3)))
            return pruning.objective_value()
    """

    def __init__(self, trial: optuna.trial.Trial, monitor: str, mode: str = "max") -> None:
        if mode not in ("max", "min"):
            raise InvalidArgumentError(f"OptunaPruning(mode={mode!r}): choose 'max' or 'min'")
        self.trial = trial
        self.monitor = monitor
        self.mode = mode
        self.reported: dict[int, float] = {}  # validation number -> value
        self._last_step: int | None = None  # the optimizer step of the last reported validation
        self.pruned_at: int | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.world_size > 1:
            raise InvalidArgumentError(
                f"OptunaPruning: a trial runs in one process, this one has {trainer.world_size}; run one tune worker "
                "per device or machine on the same --storage instead"
            )

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            close = difflib.get_close_matches(self.monitor, list(metrics), n=1)
            raise InvalidArgumentError(
                f"--monitor {self.monitor!r} was not logged by the trial's validation"
                + (f"; did you mean {close[0]!r}?" if close else "")
                + f" (logged: {', '.join(sorted(metrics)) or 'nothing'})"
            )
        if trainer.global_step == self._last_step:  # a second validation at the same step adds no point
            return
        self._last_step = trainer.global_step
        step = len(self.reported) + 1
        value = float(metrics[self.monitor])
        self.reported[step] = value
        self.trial.report(value, step=step)
        if self.trial.should_prune():
            self.pruned_at = step
            trainer.should_stop = True

    def objective_value(self) -> float:
        """The best reported value; raises ``optuna.TrialPruned`` if the run was pruned.

        Raises:
            InvalidArgumentError: the run ran no validation, so there is nothing to compare.
        """
        if self.pruned_at is not None:
            raise optuna.TrialPruned(
                f"{self.monitor}={self.reported[self.pruned_at]:.4g} at validation {self.pruned_at} is below the "
                "median of earlier trials"
            )
        if not self.reported:
            raise InvalidArgumentError(
                f"trial {self.trial.number} ran no validation, so it has no {self.monitor} to compare; check "
                "trainer.val_check_interval, check_val_every_n_epoch and limit_val_batches"
            )
        best = max if self.mode == "max" else min
        return best(self.reported.values())


# ---------------------------------------------------------------------------------------------- the study
def _hide_password(url: str) -> str:
    try:
        import sqlalchemy

        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not even a URL: nothing to hide
        return url


def open_study(
    storage_url: str,
    study_name: str,
    direction: str,
    *,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    heartbeat_s: int = 60,
) -> optuna.Study:
    """Create the study in the database, or load it if it exists (another worker's or an earlier run's).

    Workers record a heartbeat every ``heartbeat_s`` seconds; a RUNNING trial whose heartbeat is older than twice
    that is marked failed and re-queued once with the same values when a worker next starts a trial.

    Raises:
        InvalidArgumentError: the database cannot be opened (the URL is shown without its password); the study
            exists with the other direction.
    """
    import sqlalchemy

    engine_kwargs: dict[str, Any] = {}
    if storage_url.startswith("sqlite"):
        # several local workers share one file: wait for a lock rather than fail at once ("database is locked")
        engine_kwargs["connect_args"] = {"timeout": 60}
    try:
        with warnings.catch_warnings():  # heartbeat and its retry callback are marked experimental since 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                storage_url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_s,
                grace_period=2 * heartbeat_s,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
        study = optuna.create_study(
            storage=storage,
            study_name=study_name,
            direction="maximize" if direction == "max" else "minimize",
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        )
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InvalidArgumentError(
            f"--storage {_hide_password(storage_url)}: cannot open the study database ({type(err).__name__}: "
            f"{detail[:200]}); give a SQLAlchemy URL that this machine can open, e.g. sqlite:///runs/study.db or "
            "postgresql://user:password@host/db (with its driver installed)"
        ) from None
    wanted = optuna.study.StudyDirection.MAXIMIZE if direction == "max" else optuna.study.StudyDirection.MINIMIZE
    if study.direction != wanted:
        raise InvalidArgumentError(
            f"study {study_name!r} in {_hide_password(storage_url)} was created to {study.direction.name.lower()}; "
            f"--mode {direction} disagrees (use the other --mode, or a new --study_name)"
        )
    return study


def _counts(study: optuna.Study) -> dict[TrialState, int]:
    counts = dict.fromkeys(TrialState, 0)
    for t in study.get_trials(deepcopy=False):
        counts[t.state] += 1
    return counts


def write_best_config(
    config_path: str | Path,
    full: Mapping[str, Any],
    trial: optuna.trial.FrozenTrial,
    out: str | Path,
    header: str = "",
    run_name: str | None = None,
) -> Path:
    """Write the user's config with the trial's values set, runnable by ``lit-llm fit --config out``.

    Args:
        config_path: the config the values apply to (the trials' own, or the full-data one).
        full: that config as ``--print_config`` gives it (:func:`full_config`).
        trial: the trial whose ``params`` (dotted keys) are set.
        out: the YAML file to write.
        header: comment lines written first.
        run_name: the config's ``run_name``; default ``<out's folder>_best``, so that ``runs/<study>/best.yaml``
            trains in ``runs/<study>_best/version_<n>``.

    Example::
        write_best_config("configs/finetune/minilm_rotten_tomatoes.yaml", full, study.best_trial, "tuned.yaml")
    """
    config = yaml.safe_load(Path(config_path).read_text()) or {}
    best = apply_values(config, full, trial.params)
    best["run_name"] = run_name or f"{Path(out).absolute().parent.name}_best"
    out = Path(out)
    out.write_text(header + yaml.safe_dump(best, sort_keys=False))
    return out


def save_plots(study: optuna.Study, out_dir: str | Path, target_name: str = "Objective Value") -> list[Path]:
    """Optimization history, and parameter importances once two trials are complete, as PNG files.

    Uses ``optuna.visualization.matplotlib`` (matplotlib only; plotly is not needed). Importances come from
    Optuna's default evaluator (PED-ANOVA in Optuna 5, no scikit-learn needed).
    """
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    out_dir = Path(out_dir)
    written = []
    plots: list[tuple[str, Any]] = [("optimization_history.png", plot_optimization_history)]
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if len(complete) >= 2 and any(len({repr(t.params.get(k)) for t in complete}) > 1 for k in complete[0].params):
        plots.append(("param_importances.png", plot_param_importances))
    for name, plot in plots:
        with warnings.catch_warnings():  # the matplotlib backend of optuna.visualization is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            ax = plot(study, target_name=target_name)
        fig = ax.figure
        fig.set_size_inches(8, 5)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)  # type: ignore[arg-type]
        written.append(out_dir / name)
    return written


# ---------------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lit-llm tune",
        usage="lit-llm tune --config X.yaml --search S.yaml --trials N [options] [-- fit overrides of every trial]",
        description="Search hyperparameters with Optuna (TPE, median pruning); each trial is a lit-llm fit run.",
        epilog="Arguments after -- go to every trial's lit-llm fit, e.g. -- --trainer.max_epochs=1 for a small "
        "budget; best.yaml keeps the config's own values for them.",
    )
    parser.add_argument("--config", required=True, help="the lit-llm fit config (YAML) every trial starts from")
    parser.add_argument("--search", required=True, help="search space: YAML of dotted.key: {low, high} / {choices}")
    parser.add_argument("--trials", required=True, type=int, help="finished trials the study should have in all")
    parser.add_argument("--storage", default=None, help="SQLAlchemy URL (default sqlite:///RUN_ROOT/STUDY/study.db)")
    parser.add_argument("--study_name", default=None, help="default: the config's file name")
    parser.add_argument("--monitor", default=None, help="metric to optimize (default: the ModelCheckpoint's)")
    parser.add_argument("--mode", choices=("max", "min"), default=None, help="default: the ModelCheckpoint's")
    parser.add_argument("--run_root", default="runs", help="parent of the study folder (default runs)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the TPE sampler")
    parser.add_argument("--startup_trials", type=int, default=None,
                        help="random trials before TPE and before pruning (default: trials // 3, between 2 and 10)")
    parser.add_argument("--no_pruning", action="store_true", help="never stop a trial early")
    parser.add_argument("--heartbeat_s", type=int, default=60,
                        help="heartbeat period; a trial silent for twice this is failed and retried")
    return parser


def full_config(config: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """The config as ``lit-llm fit --config CONFIG [OVERRIDES] --print_config`` prints it: every key, defaults included.

    Raises:
        FileNotFoundError: no such file.
        InvalidArgumentError: LightningCLI rejects the config (its own message is printed first, on stderr).
    """
    from lit_llm.commands.lightning_cli import LitLLMCLI  # each trial is a `lit-llm fit` run

    if not Path(config).is_file():
        raise FileNotFoundError(f"--config {config}: no such file")
    buffer = io.StringIO()
    code: Any = 0
    with contextlib.redirect_stdout(buffer):
        try:
            LitLLMCLI(args=["fit", "--config", config, *(overrides or []), "--print_config"])
        except SystemExit as exit_:
            code = exit_.code
    if code not in (0, None):
        given = " ".join(["--config", config, *(overrides or [])])
        raise InvalidArgumentError(f"lit-llm fit {given}: not a valid lit-llm fit config (see the error above)")
    return yaml.safe_load(buffer.getvalue())


def _default_objective(full: Mapping[str, Any], monitor: str | None, mode: str | None, config: str) -> tuple[str, str]:
    callbacks = (full.get("trainer") or {}).get("callbacks") or []
    checkpoints = [
        (c.get("init_args") or {})
        for c in callbacks
        if isinstance(c, Mapping) and str(c.get("class_path", "")).endswith("ModelCheckpoint")
    ]
    monitored = [(c["monitor"], c.get("mode") or "min") for c in checkpoints if c.get("monitor")]
    if monitor is None:
        if not monitored:
            raise InvalidArgumentError(
                f"--config {config} has no ModelCheckpoint with a monitor; say what to optimize, e.g. "
                "--monitor val/accuracy --mode max"
            )
        monitor = monitored[0][0]
    if mode is None:
        modes = [m for name, m in monitored if name == monitor]
        if not modes:
            raise InvalidArgumentError(f"--monitor {monitor}: give --mode max or --mode min (no ModelCheckpoint says)")
        mode = modes[0]
    return monitor, mode


def _logger_override(full: Mapping[str, Any], study_name: str, number: int) -> list[str]:
    """Name each trial's W&B run and put it in the study's group (a WandbLogger alone or in a list)."""
    logger = (full.get("trainer") or {}).get("logger")
    loggers = logger if isinstance(logger, list) else [logger]
    if not any(isinstance(lg, Mapping) and str(lg.get("class_path", "")).endswith("WandbLogger") for lg in loggers):
        return []
    updated = copy.deepcopy(loggers)
    for lg in updated:
        if isinstance(lg, dict) and str(lg.get("class_path", "")).endswith("WandbLogger"):
            lg.setdefault("init_args", {}).update(group=study_name, name=f"{study_name}-trial-{number}")
    return [f"--trainer.logger={json.dumps(updated if isinstance(logger, list) else updated[0])}"]


def _run_trial(
    trial: optuna.trial.Trial,
    *,
    config: str,
    fit_args: list[str],
    full: Mapping[str, Any],
    space: list[SearchParam],
    study_name: str,
    run_root: Path,
    monitor: str,
    mode: str,
) -> float:
    from lit_llm.commands.lightning_cli import LitLLMCLI

    pruning = OptunaPruning(trial, monitor=monitor, mode=mode)

    class TrialCLI(LitLLMCLI):
        def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
            trainer = super().instantiate_trainer(**kwargs)
            trainer.callbacks.append(pruning)  # type: ignore[attr-defined]
            trial.set_user_attr("run_dir", str(self.run_dir))
            return trainer

    values = suggest(trial, space)
    args = ["fit", "--config", config, *fit_args, *cli_overrides(values)]
    args += ["--run_root", str(run_root), "--run_name", f"{study_name}/trial_{trial.number}"]
    args += _logger_override(full, study_name, trial.number)
    if (full.get("trainer") or {}).get("devices") == "auto":  # on a multi-GPU machine auto would launch DDP
        args.append("--trainer.devices=1")
    # RetryHeartbeatStaleTrialCallback marks the copy of a killed trial with the killed trial's number
    frozen = [t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number]
    retry_of = frozen[0].system_attrs.get("failed_trial") if frozen else None
    print(
        f"\nlit-llm tune: trial {trial.number}"
        + (f" (retry of trial {retry_of}, whose worker stopped)" if retry_of is not None else "")
        + ": "
        + ", ".join(f"{k}={v!r}" for k, v in values.items()),
        flush=True,
    )
    TrialCLI(args=args)
    return pruning.objective_value()


def _print_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial, monitor: str) -> None:
    done = sum(_counts(study)[s] for s in FINISHED)
    value = "" if trial.value is None else f"{monitor}={trial.value:.4f}"
    state = "pruned" if trial.state == TrialState.PRUNED else "finished"
    print(f"lit-llm tune: trial {trial.number} {state}: {value} ({done} finished in the study)", flush=True)


def main(argv: list[str] | None = None) -> int:
    """``lit-llm tune --config X.yaml --search S.yaml --trials N [...]``; returns the exit status.

    Raises:
        InvalidArgumentError: ``--trials`` below 1, a bad search space, an unknown ``--monitor``, a database that
            cannot be opened (``lit-llm`` prints the message alone and exits with 2).

    Example::
        main(["--config", "configs/finetune/minilm_rotten_tomatoes.yaml",
              "--search", "configs/tune/minilm_rotten_tomatoes_search.yaml", "--trials", "8"])
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    fit_args = argv[argv.index("--") + 1:] if "--" in argv else []
    args = build_parser().parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if args.trials < 1:
        raise InvalidArgumentError(f"--trials {args.trials}: the study needs at least 1 trial; give --trials N, N >= 1")
    if args.heartbeat_s < 1:
        raise InvalidArgumentError(f"--heartbeat_s {args.heartbeat_s}: give a whole number of seconds >= 1")
    if args.startup_trials is not None and args.startup_trials < 0:
        raise InvalidArgumentError(f"--startup_trials {args.startup_trials}: give a number >= 0")
    full = full_config(args.config, fit_args)
    space = load_search_space(args.search, config_keys(full))
    monitor, mode = _default_objective(full, args.monitor, args.mode, args.config)
    study_name = args.study_name or Path(args.config).stem
    run_root = Path((full.get("trainer") or {}).get("default_root_dir") or args.run_root).absolute()
    study_dir = run_root / study_name
    storage_url = args.storage
    if storage_url is None:
        study_dir.mkdir(parents=True, exist_ok=True)
        storage_url = f"sqlite:///{study_dir / 'study.db'}"
    startup = args.startup_trials if args.startup_trials is not None else min(10, max(2, args.trials // 3))
    sampler = optuna.samplers.TPESampler(n_startup_trials=startup, seed=args.seed)
    pruner: optuna.pruners.BasePruner = (
        optuna.pruners.NopPruner() if args.no_pruning else optuna.pruners.MedianPruner(n_startup_trials=max(1, startup))
    )
    study = open_study(storage_url, study_name, mode, sampler=sampler, pruner=pruner, heartbeat_s=args.heartbeat_s)
    known = study.user_attrs.get("monitor")
    if known is not None and known != monitor:
        raise InvalidArgumentError(
            f"study {study_name!r} optimizes {known}; --monitor {monitor} would mix two metrics in one study "
            "(give --monitor " + known + " or a new --study_name)"
        )
    study.set_user_attr("monitor", monitor)

    counts = _counts(study)
    done = sum(counts[s] for s in FINISHED)
    print(
        f"lit-llm tune: study {study_name!r} in {_hide_password(storage_url)} ({mode} {monitor}): {done} of "
        f"{args.trials} trials finished"
        + (f", {counts[TrialState.RUNNING]} running elsewhere or killed" if counts[TrialState.RUNNING] else ""),
        flush=True,
    )
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial is ours; a failure's error propagates

    def objective(trial: optuna.trial.Trial) -> float:
        return _run_trial(
            trial, config=args.config, fit_args=fit_args, full=full, space=space, study_name=study_name,
            run_root=run_root, monitor=monitor, mode=mode,
        )

    while sum(_counts(study)[s] for s in FINISHED) < args.trials:
        study.optimize(objective, n_trials=1, gc_after_trial=True,
                       callbacks=[lambda s, t: _print_trial(s, t, monitor)])
    return _report(study, args, fit_args, full, monitor, mode, study_dir)


def _report(
    study: optuna.Study,
    args: argparse.Namespace,
    fit_args: list[str],
    full: Mapping[str, Any],
    monitor: str,
    mode: str,
    study_dir: Path,
) -> int:
    counts = _counts(study)
    if not counts[TrialState.COMPLETE]:
        print(f"lit-llm tune: no trial of study {study.study_name!r} completed; nothing to report", file=sys.stderr)
        return 1
    study_dir.mkdir(parents=True, exist_ok=True)
    best = study.best_trial
    out = study_dir / "best.yaml"
    values = ", ".join(f"{k}={v!r}" for k, v in best.params.items())
    budget = (
        f"# the trials also ran with {' '.join(fit_args)}; this file keeps the config's own values for those\n"
        if fit_args
        else ""
    )
    header = (
        f"# Best trial {best.number} of Optuna study {study.study_name!r} ({monitor}={best.value:.6g}, {mode}),\n"
        f"# tuned by: lit-llm tune --config {args.config} --search {args.search} --trials {args.trials}\n"
        f"# tuned values: {values}\n{budget}"
        f"# train it:  lit-llm fit --config {out}\n"
    )
    write_best_config(args.config, full, best, out, header)
    plots = save_plots(study, study_dir, target_name=monitor)
    lines = [
        "",
        f"study:            {study.study_name} ({counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} "
        f"pruned, {counts[TrialState.FAIL]} failed)",
        f"best trial:       {best.number} ({monitor}={best.value:.4f})",
        *(f"  {k} = {v!r}" for k, v in best.params.items()),
    ]
    if best.user_attrs.get("run_dir"):
        lines.append(f"best run:         {best.user_attrs['run_dir']}")
    lines.append(f"best config:      {out}  (lit-llm fit --config {out})")
    lines += [f"plot:             {p}" for p in plots]
    if len(plots) < 2:
        lines.append("plot:             parameter importances need 2 complete trials with different values")
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
