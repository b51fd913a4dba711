"""`lit-llm tune`: search-space checks, the pruning callback, the study database, kill and resume, best.yaml."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from lit_llm.commands import tune
from lit_llm.errors import InvalidArgumentError

REPO = Path(__file__).resolve().parents[1]
LR = "model.init_args.optimizer.init_args.lr"
BATCH = "data.init_args.batch_size"
SEARCH = {LR: {"low": 1.0e-4, "high": 1.0e-2, "log": True}, BATCH: {"choices": [8, 16]}}
# What --print_config gives for the keys the unit tests use (the journey test reads the real one).
KEYS = {
    "model": {}, "model.init_args": {}, "model.init_args.optimizer": {}, "model.init_args.optimizer.init_args": {},
    LR: 0.003, "model.init_args.optimizer.init_args.weight_decay": 0.01, "data": {}, "data.init_args": {},
    BATCH: 16, "trainer": {}, "trainer.gradient_clip_val": None, "trainer.callbacks": [],
    "trainer.accumulate_grad_batches": 1,
}


def _tiny_config(tmp_path: Path, tiny_bert_dir: Path, csvs: dict[str, Path], *, wandb: bool = False) -> Path:
    """A fit config of 6 optimizer steps with a validation every 2 (a curve for the pruner)."""
    trainer = {
        "accelerator": "cpu", "devices": 1, "max_steps": 6, "val_check_interval": 2, "limit_val_batches": 1,
        "num_sanity_val_steps": 0, "log_every_n_steps": 1, "enable_progress_bar": False,
        "enable_model_summary": False, "logger": False,
        "callbacks": [{
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"monitor": "val/accuracy", "mode": "max", "save_top_k": 1},
        }],
    }
    if wandb:
        trainer["logger"] = {
            "class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {"project": "t", "offline": True}
        }
    config = {
        "seed_everything": 0,
        "trainer": trainer,
        "model": {
            "class_path": "lit_llm.modules.SequenceClassifier",
            "init_args": {
                "model": str(tiny_bert_dir), "export": False,
                "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 3e-3}},
            },
        },
        "data": {
            "class_path": "lit_llm.datamodules.TextClassificationDataModule",
            "init_args": {
                "tokenizer": str(tiny_bert_dir), "train_file": str(csvs["train"]),
                "validation_file": str(csvs["val"]), "batch_size": 16,
            },
        },
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _search(tmp_path: Path, space: dict) -> Path:
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


# ---------------------------------------------------------------------------------------------- search space
def test_search_space_reads_floats_ints_log_and_choices(tmp_path):
    path = _search(tmp_path, {**SEARCH, "trainer.gradient_clip_val": {"low": 0.5, "high": 2.0, "step": 0.5}})
    space = {p.key: p for p in tune.load_search_space(path, KEYS)}
    assert space[LR] == tune.SearchParam(LR, low=1e-4, high=1e-2, log=True)
    assert space[BATCH].choices == (8, 16)
    assert space["trainer.gradient_clip_val"].step == 0.5 and not space["trainer.gradient_clip_val"].is_int

    accumulate = "trainer.accumulate_grad_batches"
    ints = tune.load_search_space(_search(tmp_path, {accumulate: {"low": 2, "high": 8, "step": 2}}), KEYS)
    assert ints[0].is_int
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = tune.suggest(study.ask(), ints + list(space.values()))
    assert values[accumulate] in (2, 4, 6, 8) and isinstance(values[accumulate], int) and values[BATCH] in (8, 16)
    assert 1e-4 <= values[LR] <= 1e-2 and values["trainer.gradient_clip_val"] in (0.5, 1.0, 1.5, 2.0)


@pytest.mark.parametrize(
    ("space", "match"),
    [
        ({"model.init_args.optimizer.init_args.lrr": {"low": 0.1, "high": 0.2}},
         r"search.yaml: model.init_args.optimizer.init_args.lrr: not a key of the config; did you mean "
         r"'model.init_args.optimizer.init_args.lr'\?"),
        ({LR: {"low": 3e-4, "high": 1e-5}}, r"empty range low=0.0003 >= high=1e-05; low must be below high"),
        ({LR: {"low": 1e-4, "high": 1e-4}}, r"empty range low=0.0001 >= high=0.0001"),
        ({LR: {"low": 0.0, "high": 1e-2, "log": True}}, r"log: true needs low > 0 \(got low=0.0\)"),
        ({LR: {"low": 0, "high": 1}}, r"value 0.003 is a float but the range is written as integers; write low: 0.0"),
        ({BATCH: {"low": 8.0, "high": 32.0}}, r"value 16 is an integer; write low and high \(and step\) as integers"),
        ({LR: {"low": "a", "high": 1e-2}}, r"low and high must both be numbers \(got low='a', high=0.01\)"),
        ({LR: [1e-4, 1e-2]}, r"give \{low: ..., high: ...\} .* or \{choices: \[...\]\}, not \[0.0001, 0.01\]"),
        ({LR: {"low": 1e-4, "hihg": 1e-2}}, r"give \{low: ..., high: ...\}"),
        ({BATCH: {"choices": []}}, r"choices must be a non-empty list of numbers, strings, booleans or null"),
        ({BATCH: {"choices": [[8], [16]]}}, r"choices must be a non-empty list"),
        ({BATCH: {"choices": [8], "low": 1}}, r"choices cannot be combined with \['low'\]"),
        ({LR: {"low": 1e-4, "high": 1e-2, "log": True, "step": 1e-4}}, r"step must be a positive number and cannot"),
        ({LR: {"low": 1e-4, "high": 1e-2, "log": "yes"}}, r"log must be true or false, not 'yes'"),
    ],
)
def test_bad_search_space_is_named(tmp_path, space, match):
    with pytest.raises(InvalidArgumentError, match=match):
        tune.load_search_space(_search(tmp_path, space), KEYS)


def test_search_file_that_is_not_a_mapping_or_missing(tmp_path):
    path = tmp_path / "search.yaml"
    path.write_text("- lr\n")
    with pytest.raises(InvalidArgumentError, match=r"search.yaml: expected a mapping of dotted config keys to ranges"):
        tune.load_search_space(path, KEYS)
    with pytest.raises(FileNotFoundError, match=r"--search .*nope.yaml: no such file"):
        tune.load_search_space(tmp_path / "nope.yaml", KEYS)


def test_overrides_and_best_config_values():
    assert tune.cli_overrides({LR: 1e-5, BATCH: 16, "x.decay": "linear", "x.flag": None}) == [
        f"--{LR}=1.0e-05", f"--{BATCH}=16", "--x.decay=linear", "--x.flag=null"
    ]
    # the user's file names the optimizer class only; the full config spells it out: the value lands in that form
    user = {"model": {"init_args": {"optimizer": "torch.optim.AdamW"}}}
    full = {"model": {"init_args": {"optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.001}}}}}
    out = tune.apply_values(user, full, {LR: 0.01, "trainer.max_steps": 5})
    assert out["model"]["init_args"]["optimizer"] == {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.01}}
    assert out["trainer"] == {"max_steps": 5} and user["model"]["init_args"]["optimizer"] == "torch.optim.AdamW"


# ---------------------------------------------------------------------------------------------- bad command lines
def test_zero_trials_is_a_one_line_error(tmp_path, capsys):
    args = ["--config", str(tmp_path / "c.yaml"), "--search", str(tmp_path / "s.yaml"), "--trials", "0"]
    with pytest.raises(InvalidArgumentError, match=r"--trials 0: the study needs at least 1 trial; give --trials N"):
        tune.main(args)
    from lit_llm.cli import main as lit_llm

    assert lit_llm(["tune", *args]) == 2
    err = capsys.readouterr().err
    assert err == "lit-llm: --trials 0: the study needs at least 1 trial; give --trials N, N >= 1\n"  # no traceback


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("sqlite:////nonexistent_dir_x/deeper/study.db", r"--storage sqlite:////nonexistent_dir_x/deeper/study.db: "
         r"cannot open the study database \(OperationalError: .*unable to open database file"),
        ("not a url", r"--storage not a url: cannot open the study database \(ArgumentError"),
        ("postgresql://me:s3cret@localhost:1/db", r"--storage postgresql://me:\*\*\*@localhost:1/db: cannot open"),
    ],
)
def test_database_that_cannot_be_opened(url, match):
    with pytest.raises(InvalidArgumentError, match=match) as info:
        tune.open_study(url, "s", "max")
    assert "s3cret" not in str(info.value)


def test_study_with_the_other_direction_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    tune.open_study(url, "s", "max")
    assert tune.open_study(url, "s", "max").direction == optuna.study.StudyDirection.MAXIMIZE  # loaded, not new
    with pytest.raises(InvalidArgumentError, match=r"study 's' in .* was created to maximize; --mode min disagrees"):
        tune.open_study(url, "s", "min")


# ---------------------------------------------------------------------------------------------- pruning callback
class _FixedScore(pl.LightningModule):
    """Logs the same validation score at every validation: a flat curve at a chosen height."""

    def __init__(self, score: float, name: str = "val/acc") -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.score, self.name = score, name

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        self.log(self.name, self.score)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(8, 2)), batch_size=1)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(1, 2)), batch_size=1)


def _fit(module: pl.LightningModule, callback: tune.OptunaPruning) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=8, val_check_interval=2, num_sanity_val_steps=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
    )
    trainer.fit(module)
    return trainer


def test_pruning_stops_a_trial_below_the_median_and_the_study_records_it():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    steps = {}

    def objective(trial):
        callback = tune.OptunaPruning(trial, monitor="val/acc", mode="max")
        steps[trial.number] = _fit(_FixedScore(0.9 if trial.number == 0 else 0.1), callback).global_step
        return callback.objective_value()

    study.optimize(objective, n_trials=2)
    first, second = study.trials
    assert first.state == TrialState.COMPLETE and first.value == pytest.approx(0.9) and steps[0] == 8
    assert sorted(first.intermediate_values) == [1, 2, 3, 4]  # one point per validation, numbered
    assert second.state == TrialState.PRUNED and steps[1] == 2  # stopped at its first validation
    assert second.intermediate_values == {1: pytest.approx(0.1)}


def test_trials_with_other_batch_sizes_are_compared_at_the_same_fraction_of_an_epoch():
    """Validation at half an epoch: batch 1 validates at steps 4 and 8, batch 2 at 2 and 4; both report 1 and 2,
    so the pruner compares a batch-2 trial's half epoch with the batch-1 trial's half epoch, not its whole one."""

    class Batched(_FixedScore):
        def __init__(self, score: float, batch_size: int) -> None:
            super().__init__(score)
            self.batch_size = batch_size

        def train_dataloader(self):
            data = torch.utils.data.TensorDataset(torch.zeros(8, 2))
            return torch.utils.data.DataLoader(data, batch_size=self.batch_size)

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    for batch_size, score in ((1, 0.9), (2, 0.5)):
        trial = study.ask()
        callback = tune.OptunaPruning(trial, monitor="val/acc", mode="max")
        pl.Trainer(accelerator="cpu", max_epochs=1, val_check_interval=0.5, num_sanity_val_steps=0, logger=False,
                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   callbacks=[callback]).fit(Batched(score, batch_size))
        if callback.pruned_at is None:
            study.tell(trial, callback.objective_value())
        else:
            study.tell(trial, state=TrialState.PRUNED)
    first, second = study.trials
    assert sorted(first.intermediate_values) == [1, 2]
    # Pruned at its first validation, against the first trial's first; keyed by optimizer step (2 vs 4) the
    # first check would have had nothing to compare with and the second compared half an epoch with a whole one.
    assert second.state == TrialState.PRUNED and sorted(second.intermediate_values) == [1]


def test_pruning_callback_names_a_metric_that_was_not_logged():
    study = optuna.create_study()
    callback = tune.OptunaPruning(study.ask(), monitor="val/accuracy", mode="max")
    match = r"--monitor 'val/accuracy' was not logged by the trial's validation; did you mean 'val/acc'\? \(logged: "
    with pytest.raises(InvalidArgumentError, match=match):
        _fit(_FixedScore(0.5), callback)
    with pytest.raises(InvalidArgumentError, match=r"OptunaPruning\(mode='best'\): choose 'max' or 'min'"):
        tune.OptunaPruning(study.ask(), monitor="val/acc", mode="best")


# ---------------------------------------------------------------------------------------------- the journey
_KILLED_WORKER = f"""
import sys, time, optuna
url, name, marker = sys.argv[1:]
storage = optuna.storages.RDBStorage(url, heartbeat_interval=1)
study = optuna.load_study(study_name=name, storage=storage)
def objective(trial):
    trial.suggest_float({LR!r}, 1e-4, 1e-2, log=True)
    trial.suggest_categorical({BATCH!r}, [8, 16])
    open(marker, "w").close()
    time.sleep(600)
study.optimize(objective, n_trials=1)
"""


def test_tune_runs_trials_resumes_after_a_kill_and_writes_a_runnable_best_config(
    tmp_path, tiny_bert_dir, sentiment_csvs, monkeypatch, capsys
):
    from lit_llm.cli import main as lit_llm
    from lit_llm.tracking.wandb_offline import _frames, find_run_file

    monkeypatch.chdir(tmp_path)
    config = _tiny_config(tmp_path, tiny_bert_dir, sentiment_csvs, wandb=True)
    search = _search(tmp_path, SEARCH)
    args = ["tune", "--config", str(config), "--search", str(search), "--seed", "0", "--heartbeat_s", "1"]
    budget = ["--", "--trainer.max_steps=4"]  # every trial trains 4 steps; best.yaml keeps the config's 6

    # 1. two trials, each an ordinary fit run in its own directory, in a study kept in runs/tiny/study.db
    assert lit_llm([*args, "--trials", "2", *budget]) == 0
    study_dir = tmp_path / "runs" / "tiny"
    url = f"sqlite:///{study_dir / 'study.db'}"
    study = optuna.load_study(study_name="tiny", storage=url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    for t in study.trials:
        run_dir = study_dir / f"trial_{t.number}" / "version_0"
        assert t.user_attrs["run_dir"] == str(run_dir)
        ran = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert ran["model"]["init_args"]["optimizer"]["init_args"]["lr"] == pytest.approx(t.params[LR])
        assert ran["data"]["init_args"]["batch_size"] == t.params[BATCH]
        assert t.value == max(t.intermediate_values.values()) and sorted(t.intermediate_values) == [1, 2]
        from wandb.proto import wandb_internal_pb2 as pb

        records = [pb.Record.FromString(raw) for raw in _frames(find_run_file(run_dir / "wandb").read_bytes())]
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        assert (run.run_group, run.display_name) == ("tiny", f"tiny-trial-{t.number}")
    out = capsys.readouterr().out
    assert "(max val/accuracy): 0 of 2 trials finished" in out  # the ModelCheckpoint's metric and mode
    assert f"best trial:       {study.best_trial.number} (val/accuracy={study.best_value:.4f})" in out
    assert f"best config:      {study_dir / 'best.yaml'}" in out
    assert (study_dir / "optimization_history.png").stat().st_size > 1000
    assert (study_dir / "param_importances.png").stat().st_size > 1000

    # 2. a worker killed mid-trial leaves what any killed worker leaves: a RUNNING trial whose heartbeat stops
    marker = tmp_path / "started"
    worker = subprocess.Popen([sys.executable, "-c", _KILLED_WORKER, url, "tiny", str(marker)])
    deadline = time.monotonic() + 60
    while not marker.exists() and worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), "the worker never started its trial"
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    killed = optuna.load_study(study_name="tiny", storage=url).trials[-1]
    assert (killed.number, killed.state) == (2, TrialState.RUNNING)
    time.sleep(3.5)  # past the grace period of 2 x --heartbeat_s

    # 3. resuming to 3 trials runs one: the killed trial again, with its values; it is marked failed
    assert lit_llm([*args, "--trials", "3", *budget]) == 0
    study = optuna.load_study(study_name="tiny", storage=url)
    states = [t.state for t in study.trials]
    assert states[:3] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL] and len(states) == 4
    retry = study.trials[3]
    assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED) and retry.params == killed.params
    assert retry.system_attrs["failed_trial"] == 2
    assert sorted(p.name for p in study_dir.glob("trial_*")) == ["trial_0", "trial_1", "trial_3"]
    out = capsys.readouterr().out
    assert "study 'tiny' in sqlite:///" in out and "2 of 3 trials finished, 1 running elsewhere or killed" in out
    assert "trial 3 (retry of trial 2, whose worker stopped)" in out

    # 4. the study is complete: another call runs nothing
    assert lit_llm([*args, "--trials", "3", *budget]) == 0
    assert len(optuna.load_study(study_name="tiny", storage=url).trials) == 4

    # 5. best.yaml is the config with the best values, and `lit-llm fit --config best.yaml` trains it
    best = study.best_trial
    best_yaml = yaml.safe_load((study_dir / "best.yaml").read_text())
    assert best_yaml["model"]["init_args"]["optimizer"]["init_args"]["lr"] == best.params[LR]
    assert best_yaml["data"]["init_args"]["batch_size"] == best.params[BATCH]
    assert best_yaml["run_name"] == "tiny_best" and best_yaml["trainer"]["max_steps"] == 6
    assert "# the trials also ran with --trainer.max_steps=4" in (study_dir / "best.yaml").read_text()
    assert lit_llm(["fit", "--config", str(study_dir / "best.yaml"), "--trainer.logger=false"]) == 0
    run_dir = tmp_path / "runs" / "tiny_best" / "version_0"
    ran = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert ran["model"]["init_args"]["optimizer"]["init_args"]["lr"] == best.params[LR]
    assert ran["trainer"]["max_steps"] == 6
    assert list((run_dir / "checkpoints").glob("*.ckpt"))


def test_unknown_search_key_and_monitor_are_reported_before_any_trial(tmp_path, tiny_bert_dir, sentiment_csvs):
    config = _tiny_config(tmp_path, tiny_bert_dir, sentiment_csvs)
    search = _search(tmp_path, {"data.init_args.batch_sise": {"choices": [8, 16]}})
    args = ["--config", str(config), "--search", str(search), "--trials", "1", "--run_root", str(tmp_path / "runs")]
    with pytest.raises(InvalidArgumentError, match=r"batch_sise: not a key of the config; did you mean "
                       r"'data.init_args.batch_size'\?"):
        tune.main(args)
    search.write_text(yaml.safe_dump(SEARCH))
    with pytest.raises(InvalidArgumentError, match=r"--monitor val/f1: give --mode max or --mode min"):
        tune.main([*args, "--monitor", "val/f1"])
    with pytest.raises(InvalidArgumentError, match=r"lit-llm fit --config .*tiny.yaml --trainer.max_stepz=4: not a "
                       r"valid lit-llm fit config \(see the error above\)"):
        tune.main([*args, "--", "--trainer.max_stepz=4"])
    assert not (tmp_path / "runs").exists()  # nothing was created


def test_search_examples_fit_their_configs():
    """Every configs/tune/<name>_search.yaml is checked against configs/finetune/<name>.yaml."""
    examples = sorted((REPO / "configs" / "tune").glob("*_search.yaml"))
    assert examples
    for search in examples:
        config = REPO / "configs" / "finetune" / f"{search.stem.removesuffix('_search')}.yaml"
        space = tune.load_search_space(search, tune.config_keys(tune.full_config(str(config))))
        assert space, search
