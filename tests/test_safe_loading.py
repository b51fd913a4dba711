"""Safe loading: no model code runs unless asked, nothing reaches for the network offline, W&B keys stay secret."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForSequenceClassification

from lit_llm.hf import load_model, trust_remote_code

REPO = Path(__file__).resolve().parents[1]
FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"  # the shape of a W&B API key


def _model_with_remote_code(tmp_path: Path) -> tuple[Path, Path]:
    """A model directory whose config asks for its own Python code; that code leaves a marker when it runs."""
    model_dir, marker = tmp_path / "remote_model", tmp_path / "code_ran"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({
        "model_type": "evil",
        "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"},
    }))
    (model_dir / "configuration_evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import PretrainedConfig\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n"
    )
    return model_dir, marker


def test_a_models_own_code_never_runs_unless_the_user_allows_it(tmp_path, monkeypatch):
    model_dir, marker = _model_with_remote_code(tmp_path)
    monkeypatch.delenv("LIT_LLM_TRUST_REMOTE_CODE", raising=False)
    assert trust_remote_code() is False
    with pytest.raises(ValueError, match="Set LIT_LLM_TRUST_REMOTE_CODE=1 if you trust that code"):
        load_model(AutoModelForSequenceClassification, str(model_dir))
    assert not marker.exists()

    monkeypatch.setenv("LIT_LLM_TRUST_REMOTE_CODE", "maybe")
    with pytest.raises(ValueError, match=r"LIT_LLM_TRUST_REMOTE_CODE='maybe': use 1"):
        trust_remote_code()
    monkeypatch.setenv("LIT_LLM_TRUST_REMOTE_CODE", "1")
    assert trust_remote_code() is True


# Runs the CLI with an audit hook that records every attempt to resolve or connect to a host that is not this
# machine (wandb's own service talks to localhost, which is allowed).
_AUDITED = r"""
import json, socket, sys
attempts = []
LOCAL = ("localhost", "127.0.0.1", "::1", "0.0.0.0", "", None)
def hook(event, args):
    if event == "socket.getaddrinfo" and args[0] not in LOCAL:
        attempts.append(f"getaddrinfo {args[0]}")
    elif event == "socket.connect":
        address = args[1]
        if isinstance(address, tuple) and address[0] not in LOCAL and not str(address[0]).startswith("127."):
            attempts.append(f"connect {address}")
sys.addaudithook(hook)
from lit_llm.cli import main
try:
    main(sys.argv[1:])
finally:
    with open("network_attempts.json", "w") as f:
        json.dump(attempts, f)
"""


@pytest.mark.slow
def test_offline_fit_uses_no_network_and_never_writes_the_wandb_key(tmp_path, tiny_bert_dir, sentiment_csvs):
    cfg = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": 2, "limit_val_batches": 1, "log_every_n_steps": 1,
            "enable_progress_bar": False, "enable_model_summary": False,
            "logger": {"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {"project": "p"}},
        },
        "model": {"class_path": "lit_llm.modules.SequenceClassifier", "init_args": {"model": str(tiny_bert_dir)}},
        "data": {
            "class_path": "lit_llm.datamodules.TextClassificationDataModule",
            "init_args": {"tokenizer": str(tiny_bert_dir), "train_file": str(sentiment_csvs["train"]),
                          "validation_file": str(sentiment_csvs["val"]), "batch_size": 16},
        },
    }
    config = tmp_path / "offline.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB", "HF_", "TRANSFORMERS_"))}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="offline", WANDB_API_KEY=FAKE_KEY, HOME=str(tmp_path),
               PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", _AUDITED, "fit", "--config", str(config), "--run_root", str(tmp_path / "runs")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert json.loads((tmp_path / "network_attempts.json").read_text()) == []
    run_dir = tmp_path / "runs" / "offline" / "version_0"
    assert list(run_dir.rglob("*.wandb")), "the W&B run was not written"
    leaks = [p for p in run_dir.rglob("*") if p.is_file() and FAKE_KEY.encode() in p.read_bytes()]
    assert leaks == [], f"the W&B key was written to {leaks}"
    assert FAKE_KEY not in proc.stdout + proc.stderr



def _calls(attr: str):
    """(file, line, call) for every call of ``<something>.<attr>(...)`` in lit_llm/ and scripts/."""
    for path in sorted([*(REPO / "lit_llm").rglob("*.py"), *(REPO / "scripts").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attr:
                yield path.relative_to(REPO), node.lineno, node


def test_every_torch_load_is_weights_only_and_the_library_has_one_loader():
    import inspect

    from lit_llm.training.checkpointing import load_checkpoint_file

    # The one loader passes its parameter on and defaults to True (AtomicCheckpointIO passes True unless Lightning
    # is explicitly told weights_only=False); every other part of the library calls it instead of torch.load.
    assert inspect.signature(load_checkpoint_file).parameters["weights_only"].default is True
    found, unsafe, elsewhere = 0, [], []
    for path, line, call in _calls("load"):
        if not (isinstance(call.func.value, ast.Name) and call.func.value.id == "torch"):
            continue
        found += 1
        value = {k.arg: k.value for k in call.keywords}.get("weights_only")
        in_loader = str(path) == "lit_llm/training/checkpointing.py"
        if str(path).startswith("lit_llm") and not in_loader:
            elsewhere.append(f"{path}:{line}")
        if not (isinstance(value, ast.Constant) and value.value is True) and not (
            in_loader and isinstance(value, ast.Name)
        ):
            unsafe.append(f"{path}:{line}")
    assert found >= 1 and unsafe == [], f"torch.load without weights_only=True at {unsafe}"
    assert elsewhere == [], (f"torch.load outside lit_llm/training/checkpointing.py (use load_checkpoint_file) "
                            f"at {elsewhere}")


def test_every_from_pretrained_in_the_library_goes_through_the_remote_code_switch():
    unsafe = []
    for path, line, call in _calls("from_pretrained"):
        value = {k.arg: k.value for k in call.keywords}.get("trust_remote_code")
        if str(path).startswith("lit_llm") and (value is None or ast.unparse(value) != "trust_remote_code()"):
            unsafe.append(f"{path}:{line}")
    assert unsafe == [], f"from_pretrained without trust_remote_code=trust_remote_code() at {unsafe}"


# ---------------------------------------------------------------------------------------------------- hostile files
# Every path that loads a user's checkpoint goes through lit_llm.training.checkpointing.load_checkpoint_file. Each
# hostile checkpoint below writes a marker file when unpickled without restriction
# (test_the_hostile_checkpoints_are_armed); each loading path must refuse it with a CheckpointError that names the file
# and the global it refused, never advise weights_only=False, and leave no marker. (`--ckpt_path` and the distillation
# teacher are tested in their own files.)
def _refuse_with_the_loader(path: Path, tmp_path: Path) -> str:
    from lit_llm.training.checkpointing import CheckpointError, load_checkpoint_file

    with pytest.raises(CheckpointError) as info:
        load_checkpoint_file(path)
    return str(info.value)


def _refuse_on_resume(path: Path, tmp_path: Path) -> str:
    from lit_llm.training.checkpointing import AtomicCheckpointIO, CheckpointError

    with pytest.raises(CheckpointError) as info:
        AtomicCheckpointIO().load_checkpoint(path)
    return str(info.value)


def _refuse_at_export(path: Path, tmp_path: Path) -> str:
    import contextlib
    import io

    from lit_llm.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["export", str(path), str(tmp_path / "exported")]) == 2
    assert not (tmp_path / "exported").exists()
    assert err.getvalue().startswith("lit-llm export: ")
    return err.getvalue()


def _refuse_best_checkpoint_reload(path: Path, tmp_path: Path) -> str:
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lit_llm.training.checkpointing import CheckpointError
    from lit_llm.modules.best_checkpoint import restore_best_checkpoint

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

    module, checkpoint = Tiny(), ModelCheckpoint(dirpath=tmp_path / "ckpts")
    module.trainer = pl.Trainer(accelerator="cpu", logger=False, callbacks=[checkpoint], enable_progress_bar=False)
    checkpoint.best_model_path = str(path)  # as if the fit had ranked this file best
    before = module.layer.weight.detach().clone()
    with pytest.raises(CheckpointError) as info:
        restore_best_checkpoint(module)
    assert torch.equal(before, module.layer.weight)
    return str(info.value)


_LOADING_PATHS = {
    "load_checkpoint_file": _refuse_with_the_loader,
    "resume": _refuse_on_resume,
    "export": _refuse_at_export,
    "best_checkpoint": _refuse_best_checkpoint_reload,
}


@pytest.mark.parametrize("how", ["exec", "eval", "os.system", "subprocess.call", "__import__"])
def test_the_hostile_checkpoints_are_armed(tmp_path, monkeypatch, how):
    import torch

    from hostile_checkpoints import forget_module, hostile_checkpoint

    path, marker = hostile_checkpoint(tmp_path, how)
    monkeypatch.syspath_prepend(str(tmp_path / "modules"))
    forget_module(tmp_path)
    torch.load(path, weights_only=False)  # what an unrestricted loader does: this test's control, never the library
    forget_module(tmp_path)
    assert marker.exists(), f"the {how} payload did not run under an unrestricted load"


@pytest.mark.parametrize("loading_path", sorted(_LOADING_PATHS))
@pytest.mark.parametrize("how", ["exec", "eval", "os.system", "subprocess.call", "__import__"])
def test_no_loading_path_runs_code_from_a_hostile_checkpoint(tmp_path, monkeypatch, how, loading_path):
    from hostile_checkpoints import GLOBAL_NAMES, forget_module, hostile_checkpoint

    path, marker = hostile_checkpoint(tmp_path, how)
    monkeypatch.syspath_prepend(str(tmp_path / "modules"))
    forget_module(tmp_path)
    message = _LOADING_PATHS[loading_path](path, tmp_path)
    forget_module(tmp_path)
    assert not marker.exists(), f"{loading_path} ran the {how} payload"
    assert str(path) in message and "is not a readable checkpoint (it needs the unsafe globals" in message
    assert GLOBAL_NAMES[how] in message  # the refused global is named
    assert "weights_only=False" not in message and "two options" not in message and "\x1b[" not in message


def test_a_sharded_checkpoint_with_a_hostile_entry_runs_no_code(tmp_path):
    """torch's own distributed-checkpoint planner unpickles non-tensor entries without restriction (the control
    below); the loader reads them weights-only, the shards' entries and Lightning's meta.pt alike."""
    import torch
    import torch.distributed.checkpoint as dcp
    from lightning.fabric.utilities.load import _load_distributed_checkpoint

    from hostile_checkpoints import Payload
    from lit_llm.training.checkpointing import CheckpointError, load_checkpoint_file

    for where in ("entry", "meta"):
        folder, marker = tmp_path / f"sharded_{where}", tmp_path / f"marker_{where}"
        state = {"state_dict": {"layer.weight": torch.zeros(1, 2)}}
        if where == "entry":
            state["optimizer_0"] = {"param_groups": [{"lr": Payload("exec", marker)}]}
        dcp.save(state, storage_writer=dcp.FileSystemWriter(folder), no_dist=True)
        torch.save({"hyper_parameters": {"x": Payload("exec", marker)} if where == "meta" else {}}, folder / "meta.pt")
        with pytest.raises(CheckpointError, match=r"it needs the unsafe globals \['builtins.exec'\]") as info:
            load_checkpoint_file(folder)
        assert str(folder) in str(info.value) and not marker.exists()
        if where == "entry":  # control: Lightning's consolidation (torch's planner) runs the payload
            _load_distributed_checkpoint(folder)
            assert marker.exists()
    for shard in (tmp_path / "sharded_meta").glob("*.distcp"):
        shard.unlink()  # a shard lost in a copy
    with pytest.raises(CheckpointError, match=r"sharded_meta is not a readable sharded checkpoint \(FileNotFound"):
        load_checkpoint_file(tmp_path / "sharded_meta")


def test_the_allowlist_is_exact_names_of_inert_classes_each_with_a_reason():
    import importlib

    from lit_llm.training import checkpointing
    from lit_llm.training.checkpointing import ALLOWED_GLOBALS

    source = Path(checkpointing.__file__).read_text()
    block = source[source.index("ALLOWED_GLOBALS: tuple"):].split("\n)\n")[0].splitlines()[1:]
    assert len(block) == len(ALLOWED_GLOBALS)
    for line, name in zip(block, ALLOWED_GLOBALS, strict=True):
        assert line.strip().startswith(repr(name).replace("'", '"') + ",  # "), f"{name}: one line, with its reason"
        module, _, attr = name.rpartition(".")
        obj = getattr(importlib.import_module(module), attr)
        assert isinstance(obj, type) and f"{obj.__module__}.{obj.__qualname__}" == name  # exact, not a prefix
        assert module.split(".")[0] not in ("builtins", "os", "posix", "subprocess", "importlib", "sys", "shutil")
        assert not any(n in name for n in ("eval", "exec", "system", "import", "getattr"))


def test_a_path_among_hyper_parameters_loads_and_is_what_the_allowlist_admits(tmp_path):
    import pickle

    import torch

    from lit_llm.training.checkpointing import load_checkpoint_file

    path = tmp_path / "user.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"data_dir": tmp_path / "data"}}, path)
    with pytest.raises(pickle.UnpicklingError):  # torch alone refuses it ...
        torch.load(path, weights_only=True)
    assert load_checkpoint_file(path)["hyper_parameters"]["data_dir"] == tmp_path / "data"  # ... the loader admits it


@pytest.mark.parametrize("content", ["text", "bare_pickle", "truncated", "empty"])
def test_unreadable_files_name_the_file_and_never_advise_unsafe_loading(tmp_path, content):
    import pickle

    import torch

    from hostile_checkpoints import Payload
    from lit_llm.training.checkpointing import CheckpointError, load_checkpoint_file

    path, marker = tmp_path / f"{content}.ckpt", tmp_path / "ran"
    if content == "text":
        path.write_text("hello, not a checkpoint")
    elif content == "bare_pickle":  # a pickle, not torch's zip format: no list of globals to report
        path.write_bytes(pickle.dumps({"state_dict": {}, "x": Payload("exec", marker)}))
    elif content == "truncated":
        torch.save({"state_dict": {"w": torch.zeros(64)}}, path)
        path.write_bytes(path.read_bytes()[:300])
    else:
        path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=rf"{content}\.ckpt is not a readable checkpoint \(.*\)\. It may be "
                                              r"truncated .*never unpickles code\.$") as info:
        load_checkpoint_file(path)
    assert "weights_only=False" not in str(info.value) and not marker.exists()
