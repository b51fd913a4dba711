"""keep_freed_memory: large blocks come from the heap and stay there after free (glibc's own counters say so), in a
child process so that this one's allocator is left as it is; the CLI does it on CPU unless the environment says 0."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from lit_llm.training.allocator import keep_freed_memory

REPO = Path(__file__).resolve().parents[2]
glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt / mallinfo2")

CHILD = r"""
import ctypes, importlib.util, sys
# The file alone, not the package (whose import brings torch and Lightning: seconds per child).
spec = importlib.util.spec_from_file_location("allocator", sys.argv[2])
allocator = importlib.util.module_from_spec(spec)
spec.loader.exec_module(allocator)
keep_freed_memory = allocator.keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
applied = keep_freed_memory() if sys.argv[1] == "on" else False
mapped = libc.mallinfo2().hblkhd
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096

block = libc.malloc(64 << 20)  # 64 MiB, above glibc's largest mmap threshold (32 MiB)
ctypes.memset(block, 1, 64 << 20)  # touched: resident
own_mapping = libc.mallinfo2().hblkhd - mapped >= 64 << 20
libc.free(block)
kept = libc.mallinfo2().fordblks >= 64 << 20  # free bytes still held in the heap
before = rss()
released = allocator.release_freed_memory() and before - rss() >= 32 << 20  # its pages handed back
print(applied, own_mapping, kept, released if applied else "-")
"""


def _child(mode: str, **env: str) -> list[str]:
    command = [sys.executable, "-c", CHILD, mode, str(REPO / "lit_llm/training/allocator.py")]
    out = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.split()


@glibc
def test_large_blocks_come_from_the_heap_and_stay_after_free():
    assert _child("off") == ["False", "True", "False", "-"]  # glibc's default: an mmap per block, unmapped on free
    assert _child("on") == ["True", "False", "True", "True"]  # kept, until release_freed_memory hands it back


@glibc
@pytest.mark.parametrize("value", ["0", "off", "False"])
def test_the_environment_turns_it_off(value):
    assert _child("on", LIT_LLM_MALLOC_TUNING=value) == ["False", "True", "False", "-"]


def test_a_bad_threshold_is_refused():
    with pytest.raises(ValueError, match=r"keep_freed_memory\(trim_threshold=-1\): must be in \[0, 2\*\*31\)"):
        keep_freed_memory(-1)


def test_the_cli_does_it_on_cpu_says_how_to_turn_it_off_and_hands_the_memory_back_after_the_run(
        tmp_path, tiny_bert_dir, sentiment_csvs, monkeypatch, caplog):
    from lit_llm.cli import LitLLMCLI
    from lit_llm.training import allocator
    from tests.test_cli import _config

    calls: list[str] = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda *a: calls.append("keep") or True)
    monkeypatch.setattr("lit_llm.commands.lightning_cli.release_freed_memory", lambda: calls.append("release"))
    caplog.set_level("INFO")
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, tiny_bert_dir, sentiment_csvs, max_epochs=1)
    LitLLMCLI(args=["fit", "--config", str(config), "--trainer.max_steps", "3"])
    assert "CPU allocator: large freed blocks stay in the process" in caplog.text
    assert "LIT_LLM_MALLOC_TUNING=0 turns this off" in caplog.text
    assert calls == ["keep", "release"]
    for command in ("validate", "test"):  # the other subcommands too
        LitLLMCLI(args=[command, "--config", str(config), "--run_name", command])
    assert calls == ["keep", "release"] * 3


def test_a_trainer_not_on_the_cpu_is_left_alone(monkeypatch):
    from types import SimpleNamespace

    from lit_llm.commands.trainer_defaults import cpu_allocator
    from lit_llm.training import allocator

    monkeypatch.setattr(allocator, "keep_freed_memory", lambda *a: True)
    assert cpu_allocator(SimpleNamespace(accelerator=object())) is None
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda *a: False)  # declined: nothing to say
    from lightning.pytorch.accelerators import CPUAccelerator
    assert cpu_allocator(SimpleNamespace(accelerator=CPUAccelerator())) is None


def test_nothing_is_set_where_malloc_is_not_glibcs(monkeypatch):
    from lit_llm.training import allocator

    if platform.libc_ver()[0] == "glibc":  # a preloaded jemalloc / tcmalloc: the process's malloc is not libc's
        addresses = iter([1, 2])
        monkeypatch.setattr(allocator, "_malloc_address", lambda library: next(addresses))
        assert allocator._glibc_malloc() is None
    monkeypatch.setattr(platform, "libc_ver", lambda *a, **k: ("musl", ""))
    assert allocator._glibc_malloc() is None and allocator.release_freed_memory() is False
