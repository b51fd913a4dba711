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
block = libc.malloc(64 << 20)  # 64 MiB, above glibc's largest mmap threshold (32 MiB)
own_mapping = libc.mallinfo2().hblkhd - mapped >= 64 << 20
libc.free(block)
kept = libc.mallinfo2().fordblks >= 64 << 20  # free bytes still held in the heap
print(applied, own_mapping, kept)
"""


def _child(mode: str, **env: str) -> list[str]:
    command = [sys.executable, "-c", CHILD, mode, str(REPO / "lit_llm/training/allocator.py")]
    out = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.split()


@glibc
def test_large_blocks_come_from_the_heap_and_stay_after_free():
    assert _child("off") == ["False", "True", "False"]  # glibc's default: an mmap per block, unmapped on free
    assert _child("on") == ["True", "False", "True"]


@glibc
def test_the_environment_turns_it_off():
    assert _child("on", LIT_LLM_MALLOC_TUNING="0") == ["False", "True", "False"]


def test_a_bad_threshold_is_refused():
    with pytest.raises(ValueError, match=r"keep_freed_memory\(trim_threshold=-1\): must be in \[0, 2\*\*31\)"):
        keep_freed_memory(-1)


@glibc
def test_the_cli_does_it_on_cpu_and_says_how_to_turn_it_off(monkeypatch):
    from lit_llm.commands import trainer_defaults
    from lit_llm.training import allocator

    calls: list[int] = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda *a: calls.append(1) or True)
    line = trainer_defaults.cpu_allocator("cpu")
    assert line is not None and "LIT_LLM_MALLOC_TUNING=0 turns this off" in line
    assert trainer_defaults.cpu_allocator("gpu") is None and calls == [1]
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda *a: False)
    assert trainer_defaults.cpu_allocator("cpu") is None
