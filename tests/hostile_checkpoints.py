"""Hostile checkpoints for the loader tests: ``torch.save`` files whose hyper-parameters hold an object whose
``__reduce__`` would run code when unpickled (``exec``, ``eval``, ``os.system``, ``subprocess.call``,
``__import__``), each trying to write a marker file. ``armed`` proves each one does so under an unrestricted load."""

from __future__ import annotations

import builtins
import os
import shlex
import subprocess
import sys
from pathlib import Path

import torch

PAYLOADS = ("exec", "eval", "os.system", "subprocess.call", "__import__")
# The global each payload needs; the refusal names it.
GLOBAL_NAMES = {
    "exec": "builtins.exec",
    "eval": "builtins.eval",
    "os.system": f"{os.system.__module__}.system",
    "subprocess.call": "commands.call",  # pickle protocol 2 (torch.save's) writes Python 2's name for subprocess
    "__import__": "builtins.__import__",
}


class Payload:
    """Unpickling it calls ``how`` with arguments that write ``marker``."""

    def __init__(self, how: str, marker: Path, module_name: str = "") -> None:
        self.how, self.marker, self.module_name = how, str(marker), module_name

    def __reduce__(self):
        write = f"open({self.marker!r}, 'w').write('code from the checkpoint ran')"
        if self.how == "exec":
            return (builtins.exec, (write,))
        if self.how == "eval":
            return (builtins.eval, (write,))
        if self.how == "os.system":
            return (os.system, (f"touch {shlex.quote(self.marker)}",))
        if self.how == "subprocess.call":
            return (subprocess.call, (["touch", self.marker],))
        return (builtins.__import__, (self.module_name,))  # the module writes the marker when imported


def payload(how: str, marker: Path, module_dir: Path, module_name: str) -> Payload:
    """A payload alone, to put wherever a test needs it; for ``__import__`` it writes ``module_dir/module_name.py``
    (which writes the marker when imported), and the caller puts ``module_dir`` on ``sys.path``."""
    (module_dir / f"{module_name}.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\n")
    return Payload(how, marker, module_name)


def hostile_checkpoint(tmp_path: Path, how: str) -> tuple[Path, Path]:
    """``(checkpoint, marker)``: a Lightning-shaped ``.ckpt`` with a payload among its hyper-parameters.

    For ``__import__`` a module that writes the marker on import is put in ``tmp_path/modules``, which the caller
    must put on ``sys.path`` (``monkeypatch.syspath_prepend``) so that the payload would really find it.
    """
    marker = tmp_path / f"marker_{how.replace('.', '_')}"
    module_name = f"lit_llm_test_payload_{abs(hash(str(tmp_path))) % 10**8}"
    modules = tmp_path / "modules"
    modules.mkdir(exist_ok=True)
    (modules / f"{module_name}.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\n")
    path = tmp_path / f"hostile_{how.replace('.', '_')}.ckpt"
    torch.save(
        {
            "state_dict": {"layer.weight": torch.zeros(1, 2), "layer.bias": torch.zeros(1)},
            "pytorch-lightning_version": "2.6.0",
            "global_step": 1,
            "hyper_parameters": {"lr": 0.1, "note": Payload(how, marker, module_name)},
        },
        path,
    )
    return path, marker


def forget_module(tmp_path: Path) -> None:
    """Drop the marker-writing module from ``sys.modules`` so that another import would run it again."""
    for name in [n for n in sys.modules if n.startswith("lit_llm_test_payload_")]:
        del sys.modules[name]
